// Issue 16: the kernel's CPU per relayed datagram with an edge-triggered epoll read until
// EAGAIN (2 recvfrom per datagram, as mio's loop did) against a level-triggered epoll read once
// per announcement (1 recvfrom, as relay/event_loop.rs does now). One thread, no sleeping (so
// no wake-ups in the figure): the "phone" sends one 172-byte datagram to each of N relay
// sockets, then the relay part (timed with CLOCK_THREAD_CPUTIME_ID) epoll_waits, reads and
// sends each datagram to a sink socket (the loopback delivery into the sink is in the figure,
// as in the real relay); LT also pays the final epoll_wait that re-polls the announced
// sockets and finds them empty. Build and run, alternating the two modes:
//
//   gcc -O2 -o /tmp/epoll_et_lt integration/scripts/epoll_et_lt.c
//   for i in $(seq 8); do /tmp/epoll_et_lt 200 2000 e; /tmp/epoll_et_lt 200 2000 l; done
//
// (arguments: N sockets, batches, e = edge-triggered / l = level-triggered)
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

/* A non-blocking UDP socket on 127.0.0.1, any port. */
static int udp(void) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (s < 0 || bind(s, (void *)&a, sizeof a) < 0) {
        perror("socket");
        exit(1);
    }
    return s;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s N BATCHES e|l\n", argv[0]);
        return 2;
    }
    int n = atoi(argv[1]), batches = atoi(argv[2]), et = argv[3][0] == 'e';
    int *rs = malloc(n * sizeof(int));
    struct sockaddr_in *ra = malloc(n * sizeof *ra);
    int ep = epoll_create1(0);
    for (int i = 0; i < n; i++) {
        rs[i] = udp();
        socklen_t l = sizeof ra[i];
        getsockname(rs[i], (void *)&ra[i], &l);
        struct epoll_event e = {.events = EPOLLIN | (et ? EPOLLET : 0), .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, rs[i], &e);
    }
    int phone = udp(), sink = udp(), out = udp();
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    getsockname(sink, (void *)&sa, &sl);
    char buf[2049], pkt[172];
    memset(pkt, 0x80, sizeof pkt);
    struct epoll_event ev[1024];
    double t = 0;
    long relayed = 0, recvs = 0, waits = 0;
    for (int b = 0; b < batches; b++) {
        for (int i = 0; i < n; i++)
            sendto(phone, pkt, sizeof pkt, 0, (void *)&ra[i], sizeof ra[i]);
        long got = 0;
        double t0 = now();
        while (got < n) {
            int k = epoll_wait(ep, ev, 1024, 0);
            waits++;
            for (int j = 0; j < k; j++) {
                int s = rs[ev[j].data.u32];
                for (;;) {
                    struct sockaddr_in src;
                    socklen_t l = sizeof src;
                    int r = recvfrom(s, buf, sizeof buf, 0, (void *)&src, &l);
                    recvs++;
                    if (r < 0)
                        break; /* EAGAIN: edge-triggered only */
                    sendto(out, buf, r, 0, (void *)&sa, sizeof sa);
                    got++;
                    if (!et)
                        break; /* level-triggered: one read per announcement */
                }
            }
        }
        if (!et) {
            /* the re-poll of the announced sockets that finds them empty */
            int k = epoll_wait(ep, ev, 1024, 0);
            waits++;
            if (k)
                fprintf(stderr, "%d sockets left readable\n", k);
        }
        t += now() - t0;
        relayed += got;
        while (recv(sink, buf, sizeof buf, 0) > 0) {
        }
    }
    printf("%s n=%d: %.0f ns/pkt relay CPU, %.2f recv/pkt, %.3f epoll_wait/pkt\n", et ? "ET" : "LT", n,
           t / relayed, (double)recvs / relayed, (double)waits / relayed);
    return 0;
}
