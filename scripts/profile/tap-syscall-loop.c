/*
 * The TAP path's syscall-bound loops in C, to check the bench's Java ones (scenarios 7 and 8, docs/performance.md):
 *
 *   write: one writev (12-byte zero virtio-net header + a UDP frame) per frame on one TAP queue, as 7 does;
 *   read:  a sender thread (packet socket bound to the TAP, 32 frames per sendmmsg, one flow each) on CPU 0 and one
 *          readv (header + 2 KiB) per frame from one TAP queue on CPU 1, as 8 does (one queue: every flow lands on it).
 *
 * Build and run (root; inside a namespace of its own, so nothing reaches the host's interfaces):
 *   gcc -O2 -pthread -o /tmp/tap-loop scripts/profile/tap-syscall-loop.c
 *   ip netns add tl && ip netns exec tl /tmp/tap-loop write 64 5; ip netns exec tl /tmp/tap-loop read 64 5; ip netns del tl
 * Prints frames per second and the loop thread's CPU ns per frame. Not part of the build or the tests.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <net/ethernet.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* from <net/if.h>, which clashes with <linux/if.h> */
extern unsigned int if_nametoindex(const char *ifname);

#define DEV "tloop0"
#define BURST 32

static atomic_int stop;
static int frame_len;

static void die(const char *what) { perror(what); exit(1); }

static void pin(int cpu) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    if (sched_setaffinity(0, sizeof s, &s) != 0) die("sched_setaffinity");
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double thread_cpu(void) {
    struct rusage u;
    getrusage(RUSAGE_THREAD, &u);
    return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

/* A UDP/IPv4 frame of frame_len bytes (at least 60), flow `flow`: what the bench sends. */
static void udp_frame(unsigned char *f, int flow) {
    int len = frame_len < 60 ? 60 : frame_len;
    memset(f, 0, len);
    f[0] = 0x02; f[5] = 0x01; f[6] = 0x02; f[11] = 0xfe;
    f[12] = 0x08;
    f[14] = 0x45;
    f[16] = (len - 14) >> 8; f[17] = (len - 14) & 0xff;
    f[22] = 64; f[23] = 17;
    f[26] = 192; f[27] = 168; f[29] = 1; f[30] = 192; f[31] = 168; f[33] = 2;
    f[34] = (20000 + flow) >> 8; f[35] = (20000 + flow) & 0xff;
    f[37] = 9;
    f[38] = (len - 34) >> 8; f[39] = (len - 34) & 0xff;
}

static int tap_queue(void) {
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) die("open /dev/net/tun");
    struct ifreq r;
    memset(&r, 0, sizeof r);
    strcpy(r.ifr_name, DEV);
    r.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE;
    if (ioctl(fd, TUNSETIFF, &r) != 0) die("TUNSETIFF");
    int hdr = 12;
    if (ioctl(fd, TUNSETVNETHDRSZ, &hdr) != 0) die("TUNSETVNETHDRSZ");
    if (fcntl(fd, F_SETFL, O_NONBLOCK) != 0) die("O_NONBLOCK");
    return fd;
}

static void *sender(void *arg) {
    (void) arg;
    pin(0);
    int s = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
    if (s < 0) die("socket(AF_PACKET)");
    struct sockaddr_ll a = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL), .sll_ifindex = if_nametoindex(DEV)};
    if (bind(s, (struct sockaddr *) &a, sizeof a) != 0) die("bind");
    static unsigned char frames[BURST][2048];
    struct iovec iov[BURST];
    struct mmsghdr m[BURST];
    memset(m, 0, sizeof m);
    for (int i = 0; i < BURST; i++) {
        udp_frame(frames[i], i);
        iov[i].iov_base = frames[i];
        iov[i].iov_len = frame_len < 60 ? 60 : frame_len;
        m[i].msg_hdr.msg_iov = &iov[i];
        m[i].msg_hdr.msg_iovlen = 1;
    }
    while (!atomic_load(&stop)) {
        if (sendmmsg(s, m, BURST, 0) < 0 && errno != EAGAIN && errno != ENOBUFS) die("sendmmsg");
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s write|read FRAME_BYTES SECONDS\n", argv[0]);
        return 2;
    }
    int writing = strcmp(argv[1], "write") == 0;
    frame_len = atoi(argv[2]);
    double seconds = atof(argv[3]);
    int q = tap_queue();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "ip link set %s address 02:00:00:00:00:fe up", DEV);
    if (system(cmd) != 0) die(cmd);
    pthread_t t;
    if (!writing && pthread_create(&t, NULL, sender, NULL) != 0) die("pthread_create");
    pin(1);
    static unsigned char hdr[12], buf[2048];
    unsigned char frame[2048];
    udp_frame(frame, 0);
    struct iovec w[2] = {{hdr, 12}, {frame, frame_len < 60 ? 60 : frame_len}};
    struct iovec r[2] = {{hdr, 12}, {buf, sizeof buf}};
    long n = 0;
    double t0 = now(), c0 = thread_cpu(), end = t0 + seconds;
    for (long i = 0;; i++) {
        if ((i & 1023) == 0 && now() >= end) break;
        ssize_t k = writing ? writev(q, w, 2) : readv(q, r, 2);
        if (k > 0) {
            n++;
        } else if (k < 0 && errno == EAGAIN && !writing) {
            struct pollfd p = {q, POLLIN, 0};
            poll(&p, 1, 100);
        } else if (k < 0 && errno != EAGAIN) {
            die(writing ? "writev" : "readv");
        }
    }
    double t1 = now(), c1 = thread_cpu();
    atomic_store(&stop, 1);
    if (!writing) pthread_join(t, NULL);
    printf("%s %d B: %.3f Mpps, %.1f CPU ns per frame (loop thread)\n", argv[1], frame_len, n / (t1 - t0) / 1e6,
           (c1 - c0) * 1e9 / n);
    return 0;
}
