/*
 * probe.c: the isolation suite's helper, run as root inside a machine (compiled on the
 * host with `gcc -static`, copied in through an exec's stdin). It does what a shell
 * cannot: issue a system call by number through each of the three x86-64 entry points,
 * hold thousands of ptys open, crash to see whether a core is dumped, and (as a VM's
 * root, who has raw sockets) forge Ethernet frames and report the datagrams it receives.
 *
 *   probe sys LABEL:ABI:NR:A0:A1:A2:A3:A4:A5 ...
 *       ABI is 64 (`syscall`), 32 (`int $0x80`, i386 numbers) or x32 (`syscall` with
 *       NR | 0x40000000). Each call runs in a child of its own, so that one the filter
 *       lets through cannot disturb the next (a successful clone or unshare stays in that
 *       child) and a filter that kills is seen as such. An argument "pid" is getpid().
 *       Prints "LABEL ABI ret=R errno=E" or "LABEL ABI signal=S" per call.
 *   probe ptys N SECONDS
 *       Opens /dev/ptmx up to N times, keeping every master open; prints
 *       "opened=K errno=E" (E: why the next one failed, 0 if none did), then holds them
 *       until a byte or EOF arrives on stdin or SECONDS pass.
 *   probe core
 *       Prints RLIMIT_CORE ("soft=S hard=H"), tries to raise it ("raise=ERRNO"), then
 *       crashes a child with SIGSEGV and prints "signal=S dumped=0|1" (WCOREDUMP).
 *   probe frames IFACE HEX...
 *       Sends each HEX-encoded Ethernet frame, as it is, out of interface IFACE through a
 *       packet socket (a VM's root forging frames); prints "sent=N", or fails with
 *       "FAIL: ..." and exit code 1.
 *   probe udp PORT
 *       Binds UDP PORT on every address, prints "ready", then "got ADDR:PORT BYTES" per
 *       datagram until a byte or EOF arrives on stdin.
 *   probe connect ADDR PORT N MS
 *       Starts N TCP connections to ADDR:PORT at once (non-blocking, from this one
 *       process), waits up to MS milliseconds for them, closes them all and prints
 *       "connected=K of N".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define X32_BIT 0x40000000L

/* The 64-bit entry point; x32 differs only in the number's bit 30. */
static long call64(long nr, const long *a) {
    long ret;
    register long r10 __asm__("r10") = a[3];
    register long r8 __asm__("r8") = a[4];
    register long r9 __asm__("r9") = a[5];
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(nr), "D"(a[0]), "S"(a[1]), "d"(a[2]), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory", "cc");
    return ret;
}

/* The i386 entry point from 64-bit code: 32-bit registers, the i386 numbers. The sixth
 * argument (ebp) is never needed here. The kernel may clear r8-r15 on this path. */
static long call32(long nr, const long *a) {
    int ret;
    __asm__ volatile("int $0x80"
                     : "=a"(ret)
                     : "a"((int)nr), "b"((int)a[0]), "c"((int)a[1]), "d"((int)a[2]),
                       "S"((int)a[3]), "D"((int)a[4])
                     : "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "memory", "cc");
    return ret;
}

static int probe_sys(int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        char spec[256];
        snprintf(spec, sizeof spec, "%s", argv[i]);
        char *fields[9] = {0};
        int n = 0;
        for (char *p = strtok(spec, ":"); p && n < 9; p = strtok(NULL, ":"))
            fields[n++] = p;
        if (n < 3) {
            fprintf(stderr, "bad spec %s\n", argv[i]);
            return 2;
        }
        const char *label = fields[0], *abi = fields[1];
        long nr = strtol(fields[2], NULL, 0);
        long a[6] = {0};
        for (int k = 0; k < 6 && 3 + k < n; k++)
            a[k] = strcmp(fields[3 + k], "pid") == 0 ? (long)getpid()
                                                     : strtol(fields[3 + k], NULL, 0);
        int fds[2];
        if (pipe(fds) != 0) {
            perror("pipe");
            return 2;
        }
        fflush(stdout);
        pid_t child = fork();
        if (child < 0) {
            perror("fork");
            return 2;
        }
        if (child == 0) {
            close(fds[0]);
            long r = strcmp(abi, "32") == 0    ? call32(nr, a)
                     : strcmp(abi, "x32") == 0 ? call64(nr | X32_BIT, a)
                                               : call64(nr, a);
            /* Should a clone get through, its child (r == 0) reports too and leaves: the
             * first report read says the call succeeded either way. */
            ssize_t w = write(fds[1], &r, sizeof r);
            (void)w;
            _exit(0);
        }
        close(fds[1]);
        long r = 0;
        ssize_t got = read(fds[0], &r, sizeof r);
        close(fds[0]);
        int status = 0;
        waitpid(child, &status, 0);
        if (got != (ssize_t)sizeof r) {
            printf("%s %s signal=%d\n", label, abi, WIFSIGNALED(status) ? WTERMSIG(status) : 0);
        } else if (r < 0 && r > -4096) {
            printf("%s %s ret=-1 errno=%ld\n", label, abi, -r);
        } else {
            printf("%s %s ret=%ld errno=0\n", label, abi, r);
        }
    }
    fflush(stdout);
    return 0;
}

static int probe_ptys(long want, long seconds) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)want + 64) {
        rl.rlim_cur = rl.rlim_max < (rlim_t)want + 64 ? rl.rlim_max : (rlim_t)want + 64;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    long opened = 0;
    int err = 0;
    while (opened < want) {
        int fd = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (fd < 0) {
            err = errno;
            break;
        }
        opened++;
    }
    printf("opened=%ld errno=%d (%s)\n", opened, err, err ? strerror(err) : "none");
    fflush(stdout);
    struct pollfd p = {.fd = 0, .events = POLLIN};
    poll(&p, 1, (int)(seconds * 1000));
    return 0;
}

static int probe_core(void) {
    struct rlimit rl;
    getrlimit(RLIMIT_CORE, &rl);
    printf("soft=%lld hard=%lld\n", (long long)(rl.rlim_cur == RLIM_INFINITY ? -1 : (long long)rl.rlim_cur),
           (long long)(rl.rlim_max == RLIM_INFINITY ? -1 : (long long)rl.rlim_max));
    struct rlimit up = {RLIM_INFINITY, RLIM_INFINITY};
    int raised = setrlimit(RLIMIT_CORE, &up) == 0 ? 0 : errno;
    printf("raise=%d\n", raised);
    /* Whatever the hard limit allows, ask for all of it. */
    getrlimit(RLIMIT_CORE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_CORE, &rl);
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        signal(SIGSEGV, SIG_DFL);
        raise(SIGSEGV);
        _exit(0);
    }
    int status = 0;
    waitpid(child, &status, 0);
    printf("signal=%d dumped=%d\n", WIFSIGNALED(status) ? WTERMSIG(status) : 0,
           WIFSIGNALED(status) && WCOREDUMP(status) ? 1 : 0);
    return 0;
}

static int unhex(char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static int probe_frames(const char *iface, int n, char **hex) {
    int s = socket(AF_PACKET, SOCK_RAW, 0);
    unsigned idx = if_nametoindex(iface);
    if (s < 0 || idx == 0) {
        printf("FAIL: packet socket on %s: %s\n", iface, strerror(errno));
        return 1;
    }
    int sent = 0;
    for (int i = 0; i < n; i++) {
        unsigned char buf[2048];
        size_t len = strlen(hex[i]) / 2;
        if (len < 14 || len > sizeof buf) {
            printf("FAIL: frame %d has %zu bytes\n", i, len);
            return 1;
        }
        for (size_t k = 0; k < len; k++) {
            int hi = unhex(hex[i][2 * k]), lo = unhex(hex[i][2 * k + 1]);
            if (hi < 0 || lo < 0) {
                printf("FAIL: frame %d is not lowercase hex\n", i);
                return 1;
            }
            buf[k] = (unsigned char)(hi << 4 | lo);
        }
        struct sockaddr_ll to = {.sll_family = AF_PACKET, .sll_ifindex = (int)idx, .sll_halen = 6};
        memcpy(to.sll_addr, buf, 6);
        if (sendto(s, buf, len, 0, (struct sockaddr *)&to, sizeof to) < 0) {
            printf("FAIL: sending frame %d: %s\n", i, strerror(errno));
            return 1;
        }
        sent++;
    }
    printf("sent=%d\n", sent);
    return 0;
}

static int probe_udp(int port) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in at = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    if (s < 0 || bind(s, (struct sockaddr *)&at, sizeof at) < 0) {
        printf("FAIL: binding UDP %d: %s\n", port, strerror(errno));
        return 1;
    }
    printf("ready\n");
    for (;;) {
        struct pollfd fds[2] = {{.fd = 0, .events = POLLIN}, {.fd = s, .events = POLLIN}};
        if (poll(fds, 2, -1) < 0 && errno != EINTR)
            return 1;
        if (fds[0].revents)
            return 0;
        if (fds[1].revents & POLLIN) {
            char buf[2048];
            struct sockaddr_in from;
            socklen_t fl = sizeof from;
            ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
            if (n >= 0)
                printf("got %s:%d %zd\n", inet_ntoa(from.sin_addr), ntohs(from.sin_port), n);
        }
    }
}

static int probe_connect(const char *addr, int port, int n, int ms) {
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    struct pollfd *fds = calloc((size_t)n, sizeof *fds);
    if (!fds || inet_pton(AF_INET, addr, &to.sin_addr) != 1) {
        printf("FAIL: address %s\n", addr);
        return 1;
    }
    for (int i = 0; i < n; i++) {
        fds[i].fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        fds[i].events = POLLOUT;
        if (fds[i].fd < 0 ||
            (connect(fds[i].fd, (struct sockaddr *)&to, sizeof to) < 0 && errno != EINPROGRESS)) {
            printf("FAIL: connection %d: %s\n", i, strerror(errno));
            return 1;
        }
    }
    int connected = 0, pending = n;
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (pending > 0) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        long left = ms - ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000);
        if (left <= 0 || poll(fds, (nfds_t)n, (int)left) <= 0)
            break;
        for (int i = 0; i < n; i++) {
            if (fds[i].fd < 0 || !fds[i].revents)
                continue;
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(fds[i].fd, SOL_SOCKET, SO_ERROR, &err, &len);
            connected += err == 0;
            close(fds[i].fd);
            fds[i].fd = -1;
            pending--;
        }
    }
    printf("connected=%d of %d\n", connected, n);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 2 && strcmp(argv[1], "sys") == 0)
        return probe_sys(argc - 2, argv + 2);
    if (argc >= 4 && strcmp(argv[1], "ptys") == 0)
        return probe_ptys(strtol(argv[2], NULL, 0), strtol(argv[3], NULL, 0));
    if (argc >= 2 && strcmp(argv[1], "core") == 0)
        return probe_core();
    if (argc >= 3 && strcmp(argv[1], "frames") == 0)
        return probe_frames(argv[2], argc - 3, argv + 3);
    if (argc >= 6 && strcmp(argv[1], "connect") == 0)
        return probe_connect(argv[2], (int)strtol(argv[3], NULL, 0), (int)strtol(argv[4], NULL, 0),
                             (int)strtol(argv[5], NULL, 0));
    if (argc >= 3 && strcmp(argv[1], "udp") == 0)
        return probe_udp((int)strtol(argv[2], NULL, 0));
    fprintf(stderr, "usage: probe sys SPEC... | ptys N SECONDS | core | frames IFACE HEX... | "
                    "udp PORT | connect ADDR PORT N MS\n");
    return 2;
}
