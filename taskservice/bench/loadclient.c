/*
 * loadclient: the benchmarks' load client (python -m taskservice.bench
 * builds it with cc -O2, see _loadclient.py). Single-threaded, epoll,
 * libc only, so that the client is not what limits the measurement.
 *
 *   loadclient --mode MODE --port PORT [--host 127.0.0.1] [--connections N]
 *              [--total CALLS] [--path /ws] [--origin URL] [--timeout SECONDS]
 *
 * Modes (every call is echo(K), K = 1, 2, ... --total, and its reply is
 * checked: a wrong or missing reply is an error):
 *
 *   persistent     N connections, one JSON-RPC call in flight on each:
 *                  {"jsonrpc":"2.0","id":K,"method":"echo","params":[K]}\n
 *                  answered by a line with "id":K and "result":K.
 *   sequential     persistent with one connection.
 *   faq            a connection per call, N at once, as the Workerman FAQ's
 *                  caller: connect, send {"function":"echo","args":[K]}\n,
 *                  read one line (the bare result K), close.
 *   ws-persistent  N websocket connections (HTTP/1.1 upgrade to --path with
 *                  an Origin header), one masked text frame holding the
 *                  JSON-RPC request in flight on each.
 *   ws-sequential  ws-persistent with one connection.
 *   jobs           N connections, one durable job in flight on each: a
 *                  {"jsonrpc":"2.0","id":K,"method":"$/submit",
 *                   "params":{"method":"echo","params":[K]}}\n
 *                  answered by a line with "id":K and a result naming
 *                  "job":"ID", then {"jsonrpc":"2.0","id":-K,
 *                  "method":"$/attach","params":{"job":"ID"}}\n answered
 *                  by a line with "id":-K and "result":K (progress
 *                  notifications are skipped). The call is the whole job:
 *                  its latency runs from the submit's first byte to the
 *                  attach's reply; the submit's own round trip (the reply
 *                  comes after the commit) is reported as submitP50 and
 *                  submitP99.
 *   jobs-sequential  jobs with one connection.
 *   jobs-wait      jobs in one request each: the submit carries
 *                  "wait":true; its first $/progress (naming "job" and
 *                  "state", once committed) is the submit's reply for
 *                  submitP50/submitP99, and the reply to id K, "result":K,
 *                  ends the job.
 *   submit         jobs without the attach: the call is the submit alone
 *                  (its end is left to the caller to watch, in $/stats).
 *
 * Persistent modes open (and upgrade) every connection first; the clock
 * starts when all are ready. A call's latency runs from its first byte (for
 * faq: from its connect) to its reply. The run ends when every call is
 * answered, every connection is gone, or --timeout passes; calls left
 * unanswered are errors. Output: one JSON line with calls, ok, errors,
 * seconds, rate (ok calls per second), p50 and p99 (seconds), the client's
 * own CPU time (cpuUser, cpuSys: getrusage over the whole process) and the
 * first error seen.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF 16384

enum mode { LINES, FAQ, WS, JOBS };
enum state { CLOSED, CONNECTING, HANDSHAKE, READY };

struct conn {
    int fd;
    enum state state;
    int writing;          /* EPOLLOUT is being watched */
    long long id;         /* the call in flight, 0 if none */
    double started;       /* when it started */
    int attaching;        /* jobs: the submit is answered, the attach sent */
    char job[64];         /* jobs: the id the submit answered */
    size_t outLen, outOff, inLen;
    unsigned char out[BUF], in[BUF];
};

static struct {
    const char *modeName, *host, *path, *origin;
    enum mode mode;
    int attach; /* jobs: attach to each job submitted */
    int wait;   /* jobs-wait: submit with "wait":true, no attach */
    int port, connections;
    long long total;
    double timeout;
} opt = {"persistent", "127.0.0.1", "/ws", NULL, LINES, 1, 0, 0, 100, 10000, 60.0};

static struct sockaddr_in server;
static int epfd;
static struct conn *conns;
static long long nextId = 1, finished;
static double *latencies, *submitLatencies;
static size_t sampled, submitted;
static int live, ready, going;
static double runStart, clockStart;
static uint32_t seed = 2463534242u;
static char firstError[160];

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void noteError(const char *what, const void *detail, size_t len)
{
    if (firstError[0])
        return;
    int n = snprintf(firstError, sizeof firstError, "%s", what);
    for (size_t i = 0; detail && i < len && n < (int)sizeof firstError - 1; i++) {
        char ch = ((const char *)detail)[i];
        firstError[n++] = (ch < 32 || ch == '"' || ch == '\\' || ch > 126) ? '?' : ch;
    }
    firstError[n] = 0;
}

static void watch(struct conn *c, int writing)
{
    struct epoll_event ev = {.events = EPOLLIN | (writing ? EPOLLOUT : 0),
                             .data.ptr = c};
    if (c->writing != writing && epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) == 0)
        c->writing = writing;
}

static void finishCall(struct conn *c, int ok)
{
    if (!c->id)
        return;
    if (ok)
        latencies[sampled++] = now() - c->started;
    finished++;
    c->id = 0;
}

static void closeConn(struct conn *c)
{
    if (c->state == CLOSED)
        return;
    if (c->state == READY && !going)
        ready--;
    close(c->fd);
    c->state = CLOSED;
    c->fd = -1;
    live--;
}

/* Write what is queued; 0 when done or waiting for EPOLLOUT, -1 on error. */
static int flush(struct conn *c)
{
    while (c->outOff < c->outLen) {
        ssize_t n = send(c->fd, c->out + c->outOff, c->outLen - c->outOff, MSG_NOSIGNAL);
        if (n < 0 && errno == EAGAIN) {
            watch(c, 1);
            return 0;
        }
        if (n < 0) {
            noteError("send: ", strerror(errno), strlen(strerror(errno)));
            return -1;
        }
        c->outOff += (size_t)n;
    }
    c->outLen = c->outOff = 0;
    watch(c, 0);
    return 0;
}

static uint32_t random32(void)
{
    seed ^= seed << 13;
    seed ^= seed >> 17;
    seed ^= seed << 5;
    return seed;
}

/* Queue a masked websocket frame (client to server frames must be masked). */
static void queueFrame(struct conn *c, int opcode, const void *payload, size_t len)
{
    unsigned char *f = c->out + c->outLen;
    size_t h = 0;
    f[h++] = (unsigned char)(0x80 | opcode);
    if (len < 126) {
        f[h++] = (unsigned char)(0x80 | len);
    } else {
        f[h++] = 0x80 | 126;
        f[h++] = (unsigned char)(len >> 8);
        f[h++] = (unsigned char)len;
    }
    uint32_t key = random32();
    memcpy(f + h, &key, 4);
    for (size_t i = 0; i < len; i++)
        f[h + 4 + i] = ((const unsigned char *)payload)[i] ^ f[h + (i & 3)];
    c->outLen += h + 4 + len;
}

/* Queue the request of the call c->id. */
static void queueRequest(struct conn *c)
{
    char line[256];
    int n;
    if (opt.mode == FAQ)
        n = snprintf(line, sizeof line, "{\"function\":\"echo\",\"args\":[%lld]}\n", c->id);
    else if (opt.mode == JOBS && c->attaching)
        n = snprintf(line, sizeof line,
                     "{\"jsonrpc\":\"2.0\",\"id\":%lld,\"method\":\"$/attach\","
                     "\"params\":{\"job\":\"%s\"}}\n",
                     -c->id, c->job);
    else if (opt.mode == JOBS)
        n = snprintf(line, sizeof line,
                     "{\"jsonrpc\":\"2.0\",\"id\":%lld,\"method\":\"$/submit\","
                     "\"params\":{\"method\":\"echo\",\"params\":[%lld]%s}}\n",
                     c->id, c->id, opt.wait ? ",\"wait\":true" : "");
    else
        n = snprintf(line, sizeof line,
                     "{\"jsonrpc\":\"2.0\",\"id\":%lld,\"method\":\"echo\",\"params\":[%lld]}%s",
                     c->id, c->id, opt.mode == WS ? "" : "\n");
    if (opt.mode == WS) {
        queueFrame(c, 1, line, (size_t)n);
    } else {
        memcpy(c->out + c->outLen, line, (size_t)n);
        c->outLen += (size_t)n;
    }
}

/* Start the next call on c, if any are left; -1 if c broke. */
static int startCall(struct conn *c)
{
    if (nextId > opt.total)
        return 0;
    c->id = nextId++;
    c->started = now();
    c->attaching = 0;
    queueRequest(c);
    return flush(c);
}

static int openConn(struct conn *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        noteError("socket: ", strerror(errno), strlen(strerror(errno)));
        c->state = CLOSED;
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = CONNECTING;
    c->writing = 1;
    c->inLen = c->outLen = c->outOff = 0;
    live++;
    if (connect(c->fd, (struct sockaddr *)&server, sizeof server) < 0 && errno != EINPROGRESS) {
        noteError("connect: ", strerror(errno), strlen(strerror(errno)));
        closeConn(c);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    return 0;
}

/* faq: a new connection for each call, until none are left. */
static void startFaqCall(struct conn *c)
{
    while (nextId <= opt.total) {
        c->id = nextId++;
        c->started = now();
        if (openConn(c) == 0)
            return;
        finishCall(c, 0);
    }
}

static void fail(struct conn *c);

/* Persistent modes: every connection ready (or gone), start the clock. */
static void maybeGo(void)
{
    if (going || ready < live)
        return;
    going = 1;
    clockStart = now();
    for (int i = 0; i < opt.connections; i++)
        if (conns[i].state == READY && startCall(&conns[i]) < 0)
            fail(&conns[i]);
}

/* A connection broke: its call (if any) failed; faq moves on. */
static void fail(struct conn *c)
{
    finishCall(c, 0);
    closeConn(c);
    if (opt.mode == FAQ)
        startFaqCall(c);
    else
        maybeGo();
}

/* The integer at p (JSON number syntax, no fraction), or 0 on failure. */
static int integer(const char *p, const char *end, long long *value, const char **after)
{
    char digits[24];
    size_t n = 0;
    if (p < end && *p == '-')
        digits[n++] = *p++;
    while (p < end && *p >= '0' && *p <= '9' && n < sizeof digits - 1)
        digits[n++] = *p++;
    if (n == 0 || digits[n - 1] == '-')
        return 0;
    digits[n] = 0;
    *value = strtoll(digits, NULL, 10);
    *after = p;
    return p == end || *p == ',' || *p == '}' || *p == ']' || *p == ' ' || *p == '\r';
}

static int member(const char *p, size_t n, const char *key, long long *value)
{
    const char *end = p + n, *after;
    const char *k = memmem(p, n, key, strlen(key));
    if (!k)
        return 0;
    for (k += strlen(key); k < end && (*k == ' ' || *k == ':'); k++)
        ;
    return integer(k, end, value, &after);
}

/* A JSON-RPC reply answering id with result id. */
static int rpcReplyOk(const char *p, size_t n, long long id)
{
    long long gotId, result;
    return member(p, n, "\"id\"", &gotId) && gotId == id &&
           member(p, n, "\"result\"", &result) && result == id;
}

/* A submit's reply to id naming its job: copied into c->job. */
static int submitReplyOk(struct conn *c, const char *p, size_t n)
{
    long long gotId;
    static const char key[] = "\"job\":\"";
    if (!member(p, n, "\"id\"", &gotId) || gotId != c->id)
        return 0;
    const char *k = memmem(p, n, key, sizeof key - 1), *end = p + n;
    if (!k)
        return 0;
    k += sizeof key - 1;
    size_t len = 0;
    while (k + len < end && k[len] != '"' && len < sizeof c->job - 1)
        len++;
    if (len == 0 || k + len >= end || k[len] != '"')
        return 0;
    for (size_t i = 0; i < len; i++)
        if (k[i] == '\\')
            return 0; /* never sent back escaped: the attach would be wrong */
    memcpy(c->job, k, len);
    c->job[len] = 0;
    return 1;
}

/* An attach's reply: "id" -id and the job's result, id. */
static int attachReplyOk(const char *p, size_t n, long long id)
{
    long long gotId, result;
    return member(p, n, "\"id\"", &gotId) && gotId == -id &&
           member(p, n, "\"result\"", &result) && result == id;
}

/* A job's reply arrived on c: the submit's (then attach) or the attach's. */
static void jobReplied(struct conn *c, const char *p, size_t n)
{
    if (opt.wait) {
        if (memmem(p, n, "\"$/progress\"", 12)) {
            /* The first names the job: the submit is committed. */
            if (!c->attaching && memmem(p, n, "\"state\"", 7)) {
                submitLatencies[submitted++] = now() - c->started;
                c->attaching = 1;
            }
            return;
        }
        int ok = c->attaching && rpcReplyOk(p, n, c->id);
        if (!ok)
            noteError("wrong waiting submit reply: ", p, n < 100 ? n : 100);
        finishCall(c, ok);
        if (startCall(c) < 0)
            fail(c);
        return;
    }
    if (memmem(p, n, "\"$/progress\"", 12))
        return; /* a progress notification of the attach */
    if (!c->attaching) {
        if (!submitReplyOk(c, p, n)) {
            noteError("wrong submit reply: ", p, n < 100 ? n : 100);
            finishCall(c, 0);
        } else if (!opt.attach) {
            submitLatencies[submitted++] = now() - c->started;
            finishCall(c, 1);
        } else {
            submitLatencies[submitted++] = now() - c->started;
            c->attaching = 1;
            queueRequest(c);
            if (flush(c) < 0)
                fail(c);
            return;
        }
    } else {
        int ok = attachReplyOk(p, n, c->id);
        if (!ok)
            noteError("wrong attach reply: ", p, n < 100 ? n : 100);
        finishCall(c, ok);
    }
    if (startCall(c) < 0)
        fail(c);
}

/* A bare result line (the FAQ dialect) holding id. */
static int bareReplyOk(const char *p, size_t n, long long id)
{
    const char *end = p + n, *after;
    long long value;
    while (p < end && *p == ' ')
        p++;
    while (end > p && (end[-1] == '\r' || end[-1] == ' '))
        end--;
    return integer(p, end, &value, &after) && after == end && value == id;
}

static void consume(struct conn *c, size_t n)
{
    memmove(c->in, c->in + n, c->inLen - n);
    c->inLen -= n;
}

/* A reply arrived on c: check it, then the next call. */
static void replied(struct conn *c, const char *p, size_t n)
{
    if (!c->id)
        return; /* nothing was asked: ignore */
    if (opt.mode == JOBS) {
        jobReplied(c, p, n);
        return;
    }
    int ok = opt.mode == FAQ ? bareReplyOk(p, n, c->id) : rpcReplyOk(p, n, c->id);
    if (!ok)
        noteError("wrong reply: ", p, n < 100 ? n : 100);
    finishCall(c, ok);
    if (opt.mode == FAQ) {
        closeConn(c);
        startFaqCall(c);
    } else if (startCall(c) < 0) {
        fail(c);
    }
}

static void handleLines(struct conn *c)
{
    unsigned char *nl;
    while (c->state == READY && (nl = memchr(c->in, '\n', c->inLen))) {
        size_t len = (size_t)(nl - c->in);
        replied(c, (const char *)c->in, len);
        if (c->state == READY)
            consume(c, len + 1);
    }
}

static void handleHandshake(struct conn *c)
{
    unsigned char *end = memmem(c->in, c->inLen, "\r\n\r\n", 4);
    if (!end)
        return;
    if (c->inLen < 12 || memcmp(c->in, "HTTP/1.1 101", 12) != 0) {
        noteError("handshake refused: ", c->in, (size_t)(end - c->in) < 60 ? (size_t)(end - c->in) : 60);
        fail(c);
        return;
    }
    consume(c, (size_t)(end - c->in) + 4);
    c->state = READY;
    ready++;
    maybeGo();
}

static void handleFrames(struct conn *c)
{
    while (c->state == READY && c->inLen >= 2) {
        unsigned char *f = c->in;
        int opcode = f[0] & 0x0f, fin = f[0] & 0x80;
        size_t h = 2, len = f[1] & 0x7f;
        if (f[1] & 0x80) {
            noteError("masked frame from the server", NULL, 0);
            fail(c);
            return;
        }
        if (len == 126) {
            if (c->inLen < 4)
                return;
            len = (size_t)f[2] << 8 | f[3];
            h = 4;
        } else if (len == 127) {
            noteError("frame too large", NULL, 0);
            fail(c);
            return;
        }
        if (h + len > BUF) {
            noteError("frame too large", NULL, 0);
            fail(c);
            return;
        }
        if (c->inLen < h + len)
            return;
        if (opcode == 9 && len <= 125) { /* ping: answer pong */
            queueFrame(c, 10, f + h, len);
            if (flush(c) < 0) {
                fail(c);
                return;
            }
        } else if ((opcode == 1 || opcode == 2) && fin) {
            replied(c, (const char *)f + h, len);
        } else if (opcode != 10) {
            noteError(opcode == 8 ? "closed by the server: " : "unexpected frame: ",
                      f + h, len < 60 ? len : 60);
            fail(c);
            return;
        }
        if (c->state == READY)
            consume(c, h + len);
    }
}

static void connected(struct conn *c)
{
    if (opt.mode == FAQ) { /* the call started at its connect */
        c->state = READY;
        queueRequest(c);
        if (flush(c) < 0)
            fail(c);
        return;
    }
    if (opt.mode == WS) {
        c->state = HANDSHAKE;
        int n = snprintf((char *)c->out, BUF,
                         "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         "Sec-WebSocket-Version: 13\r\nOrigin: %s\r\n\r\n",
                         opt.path, opt.host, opt.port, opt.origin);
        c->outLen = (size_t)n;
        if (flush(c) < 0)
            fail(c);
        return;
    }
    c->state = READY;
    watch(c, 0);
    ready++;
    maybeGo();
}

static void handle(struct conn *c, uint32_t events)
{
    if (c->state == CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            noteError("connect: ", strerror(err), strlen(strerror(err)));
            fail(c);
        } else if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
            connected(c);
        }
        return;
    }
    if ((events & EPOLLOUT) && flush(c) < 0) {
        fail(c);
        return;
    }
    if (!(events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        return;
    ssize_t n = read(c->fd, c->in + c->inLen, BUF - c->inLen);
    if (n < 0 && errno == EAGAIN)
        return;
    if (n <= 0) {
        if (c->id)
            noteError(n == 0 ? "connection closed by the server" : "read: ",
                      n == 0 ? NULL : strerror(errno), n == 0 ? 0 : strlen(strerror(errno)));
        fail(c);
        return;
    }
    c->inLen += (size_t)n;
    if (c->state == HANDSHAKE)
        handleHandshake(c);
    if (opt.mode == WS)
        handleFrames(c);
    else
        handleLines(c);
    if (c->state != CLOSED && c->inLen == BUF) {
        noteError("reply too long", NULL, 0);
        fail(c);
    }
}

static int compare(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void printPercentile(const char *name, const double *samples, size_t count,
                            double fraction)
{
    if (!count) {
        printf(",\"%s\":null", name);
        return;
    }
    size_t i = (size_t)(fraction * (double)(count - 1) + 0.5);
    printf(",\"%s\":%.9f", name, samples[i]);
}

static void usage(const char *why)
{
    fprintf(stderr,
            "loadclient: %s\nusage: loadclient --mode persistent|sequential|faq|"
            "ws-persistent|ws-sequential|jobs|jobs-sequential|jobs-wait|submit --port PORT [--host IPV4] [--connections N]"
            " [--total CALLS] [--path PATH] [--origin URL] [--timeout SECONDS]\n",
            why);
    exit(2);
}

static void parseOptions(int argc, char **argv)
{
    static const struct option longOptions[] = {
        {"mode", 1, 0, 'm'}, {"host", 1, 0, 'h'},  {"port", 1, 0, 'p'},
        {"connections", 1, 0, 'c'}, {"total", 1, 0, 'n'}, {"path", 1, 0, 'P'},
        {"origin", 1, 0, 'o'}, {"timeout", 1, 0, 't'}, {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", longOptions, NULL)) != -1) {
        switch (ch) {
        case 'm': opt.modeName = optarg; break;
        case 'h': opt.host = optarg; break;
        case 'p': opt.port = atoi(optarg); break;
        case 'c': opt.connections = atoi(optarg); break;
        case 'n': opt.total = atoll(optarg); break;
        case 'P': opt.path = optarg; break;
        case 'o': opt.origin = optarg; break;
        case 't': opt.timeout = atof(optarg); break;
        default: usage("unknown option");
        }
    }
    const char *m = opt.modeName;
    if (!strcmp(m, "persistent") || !strcmp(m, "sequential"))
        opt.mode = LINES;
    else if (!strcmp(m, "faq"))
        opt.mode = FAQ;
    else if (!strcmp(m, "ws-persistent") || !strcmp(m, "ws-sequential"))
        opt.mode = WS;
    else if (!strcmp(m, "jobs") || !strcmp(m, "jobs-sequential"))
        opt.mode = JOBS;
    else if (!strcmp(m, "jobs-wait")) {
        opt.mode = JOBS;
        opt.wait = 1;
    }
    else if (!strcmp(m, "submit")) {
        opt.mode = JOBS;
        opt.attach = 0;
    }
    else
        usage("unknown mode");
    if (strstr(m, "sequential"))
        opt.connections = 1;
    if (opt.port <= 0 || opt.port > 65535 || opt.connections <= 0 || opt.total <= 0 ||
        opt.timeout <= 0)
        usage("--port, --connections, --total and --timeout must be positive");
    server.sin_family = AF_INET;
    server.sin_port = htons((uint16_t)opt.port);
    if (inet_pton(AF_INET, opt.host, &server.sin_addr) != 1)
        usage("--host must be an IPv4 address");
    if (!opt.origin) {
        static char origin[300];
        snprintf(origin, sizeof origin, "http://%s:%d", opt.host, opt.port);
        opt.origin = origin;
    }
}

int main(int argc, char **argv)
{
    parseOptions(argc, argv);
    if (opt.connections > opt.total && opt.mode == FAQ)
        opt.connections = (int)opt.total;
    conns = calloc((size_t)opt.connections, sizeof *conns);
    latencies = calloc((size_t)opt.total, sizeof *latencies);
    submitLatencies = calloc((size_t)opt.total, sizeof *submitLatencies);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!conns || !latencies || !submitLatencies || epfd < 0)
        usage("out of memory or epoll");
    runStart = now();
    double deadline = runStart + opt.timeout;

    if (opt.mode == FAQ) {
        going = 1;
        clockStart = now();
        for (int i = 0; i < opt.connections; i++)
            startFaqCall(&conns[i]);
    } else {
        for (int i = 0; i < opt.connections; i++)
            openConn(&conns[i]);
        maybeGo();
    }
    struct epoll_event events[256];
    while (finished < opt.total && live > 0 && now() < deadline) {
        int n = epoll_wait(epfd, events, 256, 50);
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c->state != CLOSED)
                handle(c, events[i].events);
        }
    }
    double seconds = now() - (going ? clockStart : runStart);
    if (finished < opt.total)
        noteError(now() >= deadline ? "timed out" : "every connection was lost", NULL, 0);
    long long ok = (long long)sampled;
    qsort(latencies, sampled, sizeof *latencies, compare);
    qsort(submitLatencies, submitted, sizeof *submitLatencies, compare);
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    printf("{\"mode\":\"%s\",\"connections\":%d,\"calls\":%lld,\"ok\":%lld,\"errors\":%lld,"
           "\"seconds\":%.6f,\"rate\":%.1f",
           opt.modeName, opt.connections, opt.total, ok, opt.total - ok, seconds,
           seconds > 0 ? (double)ok / seconds : 0.0);
    printPercentile("p50", latencies, sampled, 0.5);
    printPercentile("p99", latencies, sampled, 0.99);
    if (opt.mode == JOBS) {
        printPercentile("submitP50", submitLatencies, submitted, 0.5);
        printPercentile("submitP99", submitLatencies, submitted, 0.99);
    }
    printf(",\"cpuUser\":%.6f,\"cpuSys\":%.6f,\"firstError\":\"%s\"}\n",
           (double)usage.ru_utime.tv_sec + (double)usage.ru_utime.tv_usec / 1e6,
           (double)usage.ru_stime.tv_sec + (double)usage.ru_stime.tv_usec / 1e6, firstError);
    return 0;
}
