"""Packaging for gtcp, in h11's shape: version read from gtcp/_version.py."""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
version: dict[str, str] = {}
exec((HERE / "gtcp" / "_version.py").read_text(), version)

setup(
    name="gtcp",
    version=version["__version__"],
    description="The Ballerina tcp library (Swan Lake) in Python, on gevent: Listener, Client, TLS",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=["gtcp"],
    # The pytest plugin (fixtures of gtcp.testing) is a top-level module so that pytest's start-up,
    # in every project of the environment, does not import gtcp; see its docstring.
    py_modules=["_gtcp_pytest_plugin"],
    package_data={"gtcp": ["py.typed"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=[
        "gevent>=24.2",
        "cryptography>=42",
    ],
    extras_require={
        # gtcp.testing's TLSKit (gtcp_tls) needs trustme; the fixtures need pytest.
        "testing": ["pytest>=8", "trustme>=1.1"],
    },
    entry_points={
        "pytest11": ["gtcp = _gtcp_pytest_plugin"],
    },
    classifiers=[
        "Development Status :: 4 - Beta",
        "Framework :: gevent",
        "Framework :: Pytest",
        "Intended Audience :: Developers",
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: System :: Networking",
        "Typing :: Typed",
    ],
)
