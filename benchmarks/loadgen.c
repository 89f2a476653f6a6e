/*
 * loadgen.c - single-threaded epoll load generator for echo servers (loopback).
 *
 * Modes:
 *   rr      N connections; each sends SIZE bytes, waits for all SIZE bytes back
 *           (content checked), then sends the next request.
 *   stream  N connections; each writes SIZE-byte chunks continuously while
 *           reading the echo (content checked), at most WINDOW bytes in flight.
 *   lines   framed request/response: each request is K pipelined 64-byte
 *           messages (63 payload bytes + "\n") sent in ONE write; the
 *           connection waits for all K echoed messages (content checked
 *           byte for byte) before its next request.
 *   len4    the same with 4-byte big-endian length-prefixed frames: a header
 *           (value 64) + a 64-byte payload, 68 bytes a message.
 *   In the framed modes -s is ignored (the request is K messages) and the
 *   JSON line also gives messages/s ("mps" = K * req/s).
 *
 * Plain TCP or TLS (OpenSSL, no certificate verification: the load generator
 * measures servers, it does not test trust).  Prints one JSON line on stdout.
 * Exit status: 0 ok, 1 connection/content errors, 2 usage.
 *
 * Build: cc -O2 -o loadgen loadgen.c -lssl -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PAT_PERIOD 251                    /* prime: request k starts at k % 251 */
#define READ_CHUNK 65536
#define HIST_NS 100                       /* histogram bucket width */
#define HIST_BUCKETS 2000000              /* 200 ms at 100 ns */
#define MSG_PAYLOAD 64                    /* framed modes: 64-byte messages */
#define MAX_K 4096

enum { MODE_RR, MODE_STREAM, MODE_LINES, MODE_LEN4 };
static const char *const mode_names[] = {"rr", "stream", "lines", "len4"};

enum { ST_CONNECTING, ST_HANDSHAKE, ST_RUN, ST_DEAD };

typedef struct {
    int fd;
    SSL *ssl;
    int state;
    uint32_t events;     /* current epoll interest */
    int want_write;      /* last I/O blocked on write */
    uint64_t sent;       /* rr: of this request; stream: total */
    uint64_t rcvd;       /* rr: of this request; stream: total */
    uint64_t seq;        /* rr: request number */
    uint64_t t0;         /* rr: request start (ns) */
} conn_t;

static struct {
    const char *host;
    int port;
    int conns;
    size_t size;
    double duration;
    double warmup;
    int stream;
    int mode;
    int k;               /* framed modes: messages per request */
    size_t msg_len;      /* framed modes: bytes per message on the wire */
    int tls;
    size_t window;
} opt = {"127.0.0.1", 0, 1, 1024, 3.0, 0.5, 0, MODE_RR, 1, 0, 0, 0};

static unsigned char *pattern;
static unsigned char rbuf[READ_CHUNK];
static uint32_t *hist;
static uint64_t measured_requests, measured_bytes, errors, mismatches;
static uint64_t t_measure_start, t_measure_end;
static double cpu_at_start = -1, cpu_at_end;      /* own CPU seconds */
static int epfd;
static SSL_CTX *ctx;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen -p PORT [-H HOST] [-c CONNS] [-s SIZE] [-d SECONDS]\n"
            "               [-w WARMUP] [-m rr|stream|lines|len4] [-k MSGS] [-W WINDOW]\n"
            "               [-t] | -V\n");
    exit(2);
}

static void parse_args(int argc, char **argv)
{
    int ch;
    int mode_ok = 1;
    while ((ch = getopt(argc, argv, "H:p:c:s:d:w:m:k:W:tV")) != -1) {
        switch (ch) {
        case 'H': opt.host = optarg; break;
        case 'p': opt.port = atoi(optarg); break;
        case 'c': opt.conns = atoi(optarg); break;
        case 's': opt.size = (size_t)atol(optarg); break;
        case 'd': opt.duration = atof(optarg); break;
        case 'w': opt.warmup = atof(optarg); break;
        case 'm':
            mode_ok = 0;
            for (int m = 0; m < 4; m++)
                if (strcmp(optarg, mode_names[m]) == 0) {
                    opt.mode = m;
                    mode_ok = 1;
                }
            break;
        case 'k': opt.k = atoi(optarg); break;
        case 'W': opt.window = (size_t)atol(optarg); break;
        case 't': opt.tls = 1; break;
        case 'V': printf("%s\n", OpenSSL_version(OPENSSL_VERSION)); exit(0);
        default: usage();
        }
    }
    if (!mode_ok || opt.k <= 0 || opt.k > MAX_K)
        usage();
    opt.stream = opt.mode == MODE_STREAM;
    if (opt.mode == MODE_LINES || opt.mode == MODE_LEN4) {
        opt.msg_len = opt.mode == MODE_LINES ? MSG_PAYLOAD : 4 + MSG_PAYLOAD;
        opt.size = opt.msg_len * (size_t)opt.k;
    }
    if (opt.port <= 0 || opt.conns <= 0 || opt.size == 0 || opt.duration <= 0)
        usage();
    if (opt.window == 0)
        opt.window = opt.size * 4 > 262144 ? opt.size * 4 : 262144;
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int framed(void)
{
    return opt.mode == MODE_LINES || opt.mode == MODE_LEN4;
}

/*
 * Framed modes: PAT_PERIOD + K consecutive messages, each distinct (message m
 * carries m % PAT_PERIOD), so request q is the K messages starting at message
 * q % PAT_PERIOD, and its echo must be exactly those bytes.  Payload bytes
 * are printable and never '\n'.
 */
static void init_framed_pattern(void)
{
    size_t count = PAT_PERIOD + (size_t)opt.k;
    pattern = malloc(count * opt.msg_len);
    if (!pattern)
        die("malloc");
    for (size_t m = 0; m < count; m++) {
        unsigned char *msg = pattern + m * opt.msg_len;
        unsigned char *payload = msg;
        size_t plen = MSG_PAYLOAD - 1;
        if (opt.mode == MODE_LEN4) {
            msg[0] = msg[1] = msg[2] = 0;
            msg[3] = MSG_PAYLOAD;
            payload = msg + 4;
            plen = MSG_PAYLOAD;
        } else {
            msg[MSG_PAYLOAD - 1] = '\n';
        }
        for (size_t i = 0; i < plen; i++)
            payload[i] = (unsigned char)('!' + (m % PAT_PERIOD * 7 + i * 3) % 94);
    }
}

static void init_pattern(void)
{
    hist = calloc(HIST_BUCKETS, sizeof *hist);
    if (!hist)
        die("malloc");
    if (framed())
        return init_framed_pattern();
    size_t len = PAT_PERIOD + (opt.size > READ_CHUNK ? opt.size : READ_CHUNK);
    pattern = malloc(len);
    if (!pattern)
        die("malloc");
    for (size_t i = 0; i < len; i++)
        pattern[i] = (unsigned char)(i % PAT_PERIOD * 7 + 13);
}

static void init_tls(void)
{
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        ERR_print_errors_fp(stderr);
        exit(1);
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
}

static void set_interest(conn_t *c, uint32_t events)
{
    if (events == c->events)
        return;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl");
    c->events = events;
}

static void open_conn(conn_t *c, const struct sockaddr_in *addr)
{
    memset(c, 0, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0)
        die("socket");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (const struct sockaddr *)addr, sizeof *addr) < 0 && errno != EINPROGRESS)
        die("connect");
    c->state = ST_CONNECTING;
    c->events = EPOLLOUT;
    struct epoll_event ev = {.events = c->events, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
        die("epoll_ctl add");
}

static void fail(conn_t *c, const char *why)
{
    if (c->state == ST_DEAD)
        return;
    fprintf(stderr, "loadgen: connection %d: %s\n", c->fd, why);
    errors++;
    c->state = ST_DEAD;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
}

/* Returns bytes moved, 0 when blocked (sets want_write), -1 on error/EOF. */
static ssize_t io_result_ssl(conn_t *c, int r)
{
    if (r > 0)
        return r;
    int err = SSL_get_error(c->ssl, r);
    if (err == SSL_ERROR_WANT_READ)
        return 0;
    if (err == SSL_ERROR_WANT_WRITE) {
        c->want_write = 1;
        return 0;
    }
    return -1;
}

static ssize_t io_write(conn_t *c, const void *buf, size_t len)
{
    if (c->ssl)
        return io_result_ssl(c, SSL_write(c->ssl, buf, (int)len));
    ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
    if (n >= 0)
        return n;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
        c->want_write = 1;
        return 0;
    }
    return -1;
}

static ssize_t io_read(conn_t *c, void *buf, size_t len)
{
    if (c->ssl)
        return io_result_ssl(c, SSL_read(c->ssl, buf, (int)len));
    ssize_t n = recv(c->fd, buf, len, 0);
    if (n > 0)
        return n;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return 0;
    return -1;
}

static void record(uint64_t t_done, uint64_t latency_ns, uint64_t bytes)
{
    if (t_done < t_measure_start || t_done >= t_measure_end)
        return;
    measured_requests++;
    measured_bytes += bytes;
    uint64_t b = latency_ns / HIST_NS;
    hist[b < HIST_BUCKETS ? b : HIST_BUCKETS - 1]++;
}

/*
 * rr: write the rest of the request, read what came back; loop while progressing.
 * Reads only when epoll said readable: right after a request is sent its echo
 * cannot be there yet, and a speculative recv() would cost a syscall.
 */
static int drive_rr(conn_t *c, int readable)
{
    for (;;) {
        const unsigned char *req = pattern + c->seq % PAT_PERIOD * (framed() ? opt.msg_len : 1);
        if (c->sent < opt.size) {
            ssize_t n = io_write(c, req + c->sent, opt.size - c->sent);
            if (n < 0)
                return -1;
            c->sent += (uint64_t)n;
        }
        while (readable && c->rcvd < opt.size) {
            size_t want = opt.size - c->rcvd;
            ssize_t n = io_read(c, rbuf, want < READ_CHUNK ? want : READ_CHUNK);
            if (n < 0)
                return -1;
            if (n == 0) {
                readable = 0;
                break;
            }
            if (c->rcvd + (uint64_t)n > c->sent || memcmp(rbuf, req + c->rcvd, (size_t)n) != 0) {
                mismatches++;
                return -1;
            }
            c->rcvd += (uint64_t)n;
        }
        if (c->rcvd < opt.size)
            return 0;
        uint64_t t = now_ns();
        record(t, t - c->t0, opt.size);
        c->seq++;
        c->sent = c->rcvd = 0;
        c->t0 = t;
        readable = 0;
        if (t >= t_measure_end)
            return 0;
    }
}

/* stream: keep up to WINDOW bytes in flight, check every byte that comes back. */
static int drive_stream(conn_t *c, int readable)
{
    for (;;) {
        int progress = 0;
        while (c->sent - c->rcvd < opt.window) {
            size_t room = opt.window - (size_t)(c->sent - c->rcvd);
            size_t len = room < opt.size ? room : opt.size;
            ssize_t n = io_write(c, pattern + c->sent % PAT_PERIOD, len);
            if (n < 0)
                return -1;
            if (n == 0)
                break;
            c->sent += (uint64_t)n;
            progress = 1;
        }
        while (readable) {
            ssize_t n = io_read(c, rbuf, READ_CHUNK);
            if (n < 0)
                return -1;
            if (n == 0) {
                readable = 0;
                break;
            }
            if (c->rcvd + (uint64_t)n > c->sent ||
                memcmp(rbuf, pattern + c->rcvd % PAT_PERIOD, (size_t)n) != 0) {
                mismatches++;
                return -1;
            }
            c->rcvd += (uint64_t)n;
            uint64_t t = now_ns();
            if (t >= t_measure_start && t < t_measure_end)
                measured_bytes += (uint64_t)n;
            progress = 1;
        }
        if (!progress || now_ns() >= t_measure_end)
            return 0;
    }
}

static int finish_connect(conn_t *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0) {
        errno = err;
        return -1;
    }
    if (!opt.tls) {
        c->state = ST_RUN;
        return 0;
    }
    c->ssl = SSL_new(ctx);
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_connect_state(c->ssl);
    c->state = ST_HANDSHAKE;
    return 0;
}

static int handshake(conn_t *c)
{
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        c->state = ST_RUN;
        return 1;
    }
    return io_result_ssl(c, r) < 0 ? -1 : 0;
}

static int ready_count;

static uint32_t interest(const conn_t *c, int running)
{
    if (c->state == ST_CONNECTING)
        return EPOLLOUT;
    if (c->state == ST_RUN && !running)
        return 0;                /* parked until every connection is ready */
    return EPOLLIN | (c->want_write ? EPOLLOUT : 0);
}

static void drive(conn_t *c, int running, int readable)
{
    int was_running = c->state == ST_RUN;
    c->want_write = 0;
    if (c->state == ST_CONNECTING && finish_connect(c) < 0)
        return fail(c, "connect failed");
    if (c->state == ST_HANDSHAKE && handshake(c) < 0) {
        ERR_print_errors_fp(stderr);
        return fail(c, "TLS handshake failed");
    }
    if (c->state == ST_RUN && !was_running)
        ready_count++;
    if (c->state == ST_RUN && running) {
        int r = opt.stream ? drive_stream(c, readable) : drive_rr(c, readable);
        if (r < 0)
            return fail(c, mismatches ? "content mismatch" : "I/O error or EOF");
    }
    set_interest(c, interest(c, running));
}

static int poll_once(int timeout_ms, int running)
{
    struct epoll_event evs[1024];
    int n = epoll_wait(epfd, evs, 1024, timeout_ms);
    if (n < 0 && errno != EINTR)
        die("epoll_wait");
    for (int i = 0; i < n; i++) {
        conn_t *c = evs[i].data.ptr;
        if (c->state != ST_DEAD)
            drive(c, running, (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) != 0);
    }
    return n;
}

static double percentile(double p)
{
    uint64_t target = (uint64_t)(p * (double)measured_requests);
    uint64_t seen = 0;
    for (uint64_t b = 0; b < HIST_BUCKETS; b++) {
        seen += hist[b];
        if (seen > target)
            return (double)(b * HIST_NS + HIST_NS / 2) / 1000.0;
    }
    return 0.0;
}

static void connect_all(conn_t *cs, const struct sockaddr_in *addr)
{
    for (int i = 0; i < opt.conns; i++)
        open_conn(&cs[i], addr);
    uint64_t deadline = now_ns() + 30ull * 1000000000ull;
    while (ready_count + (int)errors < opt.conns) {
        if (now_ns() > deadline) {
            fprintf(stderr, "loadgen: only %d of %d connections ready\n", ready_count, opt.conns);
            exit(1);
        }
        poll_once(100, 0);
    }
    if (errors)
        exit(1);
}

static void start_all(conn_t *cs)
{
    uint64_t t = now_ns();
    t_measure_start = t + (uint64_t)(opt.warmup * 1e9);
    t_measure_end = t_measure_start + (uint64_t)(opt.duration * 1e9);
    for (int i = 0; i < opt.conns; i++) {
        cs[i].t0 = t;
        drive(&cs[i], 1, 0);
    }
}

static void report(double secs)
{
    double rps = (double)measured_requests / secs;
    double mib = (double)measured_bytes / secs / 1048576.0;
    if (opt.stream)
        rps = 0;
    int k = framed() ? opt.k : 1;
    printf("{\"mode\": \"%s\", \"tls\": %s, \"conns\": %d, \"size\": %zu, "
           "\"k\": %d, \"msg_len\": %zu, \"messages\": %llu, \"mps\": %.1f, "
           "\"seconds\": %.3f, \"requests\": %llu, \"bytes\": %llu, \"rps\": %.1f, "
           "\"mibps\": %.2f, \"p50_us\": %.2f, \"p99_us\": %.2f, \"errors\": %llu, "
           "\"mismatches\": %llu, \"cpu_pct\": %.1f}\n",
           mode_names[opt.mode], opt.tls ? "true" : "false", opt.conns, opt.size,
           k, framed() ? opt.msg_len : opt.size, (unsigned long long)(measured_requests * (uint64_t)k),
           rps * k,
           secs, (unsigned long long)measured_requests, (unsigned long long)measured_bytes,
           rps, mib, opt.stream ? 0.0 : percentile(0.50), opt.stream ? 0.0 : percentile(0.99),
           (unsigned long long)errors, (unsigned long long)mismatches,
           100.0 * (cpu_at_end - cpu_at_start) / secs);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    init_pattern();
    if (opt.tls)
        init_tls();
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opt.port)};
    if (inet_pton(AF_INET, opt.host, &addr.sin_addr) != 1) {
        fprintf(stderr, "loadgen: bad IPv4 host %s\n", opt.host);
        return 2;
    }
    epfd = epoll_create1(0);
    if (epfd < 0)
        die("epoll_create1");
    conn_t *cs = calloc((size_t)opt.conns, sizeof *cs);
    if (!cs)
        die("calloc");
    connect_all(cs, &addr);
    start_all(cs);
    for (;;) {
        uint64_t t = now_ns();
        if (cpu_at_start < 0 && t >= t_measure_start)
            cpu_at_start = cpu_seconds();
        if (t >= t_measure_end)
            break;
        int ms = (int)((t_measure_end - t) / 1000000ull) + 1;
        poll_once(ms < 100 ? ms : 100, 1);
    }
    cpu_at_end = cpu_seconds();
    report(opt.duration);
    return errors ? 1 : 0;
}
