/*
 * trivial_echo.c - the fastest echo server we can cheaply write: one thread,
 * epoll, non-blocking, 64 KiB buffer per connection, TCP_NODELAY, optional TLS
 * (OpenSSL, same settings as the Python servers: TLS >= 1.2, no compression).
 *
 * It exists to show the load generator's ceiling: the load generator must
 * drive this server far above the Python servers under test.
 *
 * usage: trivial_echo PORT [--tls CERT KEY]
 * Prints "READY <port>" once listening; exits 0 on SIGTERM/SIGINT.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE 65536

typedef struct {
    int fd;
    SSL *ssl;
    int handshaken;
    int want_write;
    unsigned events;
    size_t off, len;         /* pending echo: buf[off .. off+len) */
    unsigned char buf[BUF_SIZE];
} conn_t;

static volatile sig_atomic_t stopping;
static int epfd;
static SSL_CTX *ctx;

static void on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void init_tls(const char *cert, const char *key)
{
    ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx || SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        ERR_print_errors_fp(stderr);
        exit(1);
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
}

static int listen_on(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0)
        die("socket");
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 4096) < 0)
        die("bind/listen");
    socklen_t len = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &len);
    printf("READY %d\n", ntohs(a.sin_port));
    fflush(stdout);
    return fd;
}

static void close_conn(conn_t *c)
{
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    if (c->ssl)
        SSL_free(c->ssl);
    close(c->fd);
    free(c);
}

/* bytes moved; 0 when blocked (want_write set if on write); -1 on EOF/error */
static ssize_t io(conn_t *c, int writing)
{
    ssize_t n;
    if (c->ssl) {
        int r = writing ? SSL_write(c->ssl, c->buf + c->off, (int)c->len)
                        : SSL_read(c->ssl, c->buf, BUF_SIZE);
        if (r > 0)
            return r;
        int e = SSL_get_error(c->ssl, r);
        c->want_write |= e == SSL_ERROR_WANT_WRITE;
        return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? 0 : -1;
    }
    n = writing ? send(c->fd, c->buf + c->off, c->len, MSG_NOSIGNAL)
                : recv(c->fd, c->buf, BUF_SIZE, 0);
    if (n > 0)
        return n;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        c->want_write |= writing;
        return 0;
    }
    return -1;
}

/*
 * Echo until blocked. A read shorter than the buffer (with nothing left inside
 * OpenSSL) emptied the socket: wait for epoll instead of a recv() that would
 * only say EAGAIN (level-triggered epoll reports anything that arrives later).
 */
static int echo(conn_t *c)
{
    int drained = 0;
    for (;;) {
        if (c->len) {
            ssize_t n = io(c, 1);
            if (n <= 0)
                return (int)n;
            c->off += (size_t)n;
            c->len -= (size_t)n;
            continue;
        }
        if (drained)
            return 0;
        ssize_t n = io(c, 0);
        if (n <= 0)
            return (int)n;
        c->off = 0;
        c->len = (size_t)n;
        drained = n < BUF_SIZE && (!c->ssl || SSL_pending(c->ssl) == 0);
    }
}

static void drive(conn_t *c)
{
    c->want_write = 0;
    if (c->ssl && !c->handshaken) {
        int r = SSL_do_handshake(c->ssl);
        if (r == 1) {
            c->handshaken = 1;
        } else {
            int e = SSL_get_error(c->ssl, r);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
                return close_conn(c);
            c->want_write = e == SSL_ERROR_WANT_WRITE;
        }
    }
    if ((!c->ssl || c->handshaken) && echo(c) < 0)
        return close_conn(c);
    unsigned want = c->want_write ? EPOLLOUT : EPOLLIN;
    if (want != c->events) {
        struct epoll_event ev = {.events = want, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
        c->events = want;
    }
}

static void accept_all(int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
        if (fd < 0)
            return;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn_t *c = calloc(1, sizeof *c);
        if (!c)
            die("calloc");
        c->fd = fd;
        c->events = EPOLLIN;
        if (ctx) {
            c->ssl = SSL_new(ctx);
            SSL_set_fd(c->ssl, fd);
            SSL_set_accept_state(c->ssl);
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
        drive(c);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2 && !(argc == 5 && strcmp(argv[2], "--tls") == 0)) {
        fprintf(stderr, "usage: trivial_echo PORT [--tls CERT KEY]\n");
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    if (argc == 5)
        init_tls(argv[3], argv[4]);
    epfd = epoll_create1(0);
    int lfd = listen_on(atoi(argv[1]));
    static int listener_tag;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &listener_tag};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event evs[1024];
    while (!stopping) {
        int n = epoll_wait(epfd, evs, 1024, 200);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == &listener_tag)
                accept_all(lfd);
            else
                drive(evs[i].data.ptr);
        }
    }
    return 0;
}
