package io.mqvirtio.vhostuser;

import static io.mqvirtio.vhostuser.BackendHarness.BASIC_PF;
import static io.mqvirtio.vhostuser.BackendHarness.negotiate;
import static io.mqvirtio.vhostuser.BackendHarness.setupRing;
import static io.mqvirtio.vhostuser.RawPeer.state;
import static io.mqvirtio.vhostuser.RawPeer.u64;
import static org.assertj.core.api.Assertions.assertThat;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import io.mqvirtio.cli.Launcher;
import io.mqvirtio.linux.EventFd;
import io.mqvirtio.linux.Fd;
import io.mqvirtio.linux.IoUring;
import io.mqvirtio.linux.TestNetns;
import io.mqvirtio.linux.UnixSocket;
import io.mqvirtio.net.NetDriver;
import java.lang.foreign.Arena;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A running {@code mqvirtio serve} out of file descriptors (its soft RLIMIT_NOFILE lowered with prlimit to 3, so
 * that no new descriptor can be had), with raw vhost-user frontends: what needs a descriptor fails with one clear line
 * and breaks only the session that needed it, other VMs go on, nothing leaks, and all works again once the limit is
 * back. A thread blocked in accept(2) already holds the number it will return, so the first connection after the limit
 * is accepted.
 */
@Timeout(90)
class OutOfDescriptorsTest {
    static final long START_MS = 30_000;

    @TempDir
    Path dir;

    /**
     * Descriptors a frontend passes (SCM_RIGHTS) that the kernel drops on receipt, having nowhere to put them
     * (MSG_CTRUNC): the message that carried them (SET_VRING_CALL's eventfd, SET_MEM_TABLE's memfd) ends its session
     * with a line that names it and says why (before: "a message carries more than 8 fds", which blamed the frontend
     * for descriptors it never sent). The other VM's session, rings running, is untouched. The vhost-user socket's
     * accept fails meanwhile, in at most ten lines, and says when it accepts again (before: no such line); the
     * frontend that waited in the backlog is then fully served, and the process holds the descriptors it held before.
     */
    @Test
    void descriptorsDroppedOnReceiptEndOnlyThatSessionWithAClearError() throws Exception {
        Path a = dir.resolve("a.sock");
        Path b = dir.resolve("b.sock");
        try (Launcher.Run r = Launcher.start(dir, "serve", Launcher.command("serve", "--vm",
                "socket-path=" + a + ",loopback,name=a", "--vm", "socket-path=" + b + ",loopback,name=b"));
             RawPeer pb = awaitConnect(r, b);
             GuestRam ramB = new GuestRam();
             EventFd kick = EventFd.create(); EventFd call = EventFd.create()) {
            long pid = r.process().pid();
            String soft = softLimit(pid);
            negotiate(pb, BASIC_PF);
            pb.ok(Request.SET_MEM_TABLE, ramB.memTable(), ramB.fd());
            setupRing(pb, ramB, 0, kick, call);
            pb.ok(Request.SET_VRING_ENABLE, state(0, 1));
            r.awaitErr("b\\.sock#1: ring 0 enabled", 5_000);
            String before = openFds(pid);

            try (RawPeer pa = RawPeer.connect(a); GuestRam ramA = new GuestRam(); EventFd c0 = EventFd.create()) {
                negotiate(pa, BASIC_PF);
                pa.ok(Request.SET_MEM_TABLE, ramA.memTable(), ramA.fd());
                r.awaitErr("a\\.sock#1: memory table", 5_000);
                Thread.sleep(300); // a's acceptor is back in accept(2), holding its next number
                prlimit(pid, "3:");
                pa.sendAcked(Request.SET_VRING_CALL, u64(0), c0.fd());
                pa.expectClosed();
            }
            r.awaitErr("a\\.sock#1: closing connection: message SET_VRING_CALL \\(13\\) came with file descriptors that could "
                    + "not be received: this process has no descriptor free \\(EMFILE", 5_000);
            // The other VM's session goes on
            assertThat(pb.get(Request.GET_QUEUE_NUM)).isEqualTo(1);

            // The connection accept(2) held a number for: served until a message brings a descriptor (a memfd)
            try (RawPeer pa = awaitConnect(r, a); GuestRam ramA = new GuestRam()) {
                negotiate(pa, BASIC_PF);
                pa.sendAcked(Request.SET_MEM_TABLE, ramA.memTable(), ramA.fd());
                pa.expectClosed();
            }
            r.awaitErr("a\\.sock#2: closing connection: message SET_MEM_TABLE \\(5\\) came with file descriptors that could "
                    + "not be received", 5_000);
            r.awaitErr("a.sock: accept failed \\(10 in a row\\): accept4: Too many open files", 10_000);
            try (RawPeer waiting = RawPeer.connect(a); GuestRam ramA = new GuestRam();
                 EventFd k0 = EventFd.create(); EventFd c0 = EventFd.create()) {
                Thread.sleep(1_500); // fifteen more failures, none of them logged
                prlimit(pid, soft + ":");
                negotiate(waiting, BASIC_PF);
                waiting.ok(Request.SET_MEM_TABLE, ramA.memTable(), ramA.fd());
                setupRing(waiting, ramA, 0, k0, c0);
                waiting.ok(Request.SET_VRING_ENABLE, state(0, 1));
                r.awaitErr("a\\.sock#3: ring 0 enabled", 5_000);
                r.awaitErr("a.sock: accepting again after \\d+ failures", 5_000);
            }
            r.awaitErr("a\\.sock#3: session closed", 5_000);
            assertThat(r.stderr().lines().filter(l -> l.contains("a.sock: accept failed")).count()).as(r.stderr())
                    .isEqualTo(10);
            assertThat(openFds(pid)).as("descriptors of serve after the sessions of a ended").isEqualTo(before);
            // b's ring ran all along: it stops where it stood
            pb.send(Request.GET_VRING_BASE, state(0, 0));
            assertThat(pb.expectReplyTo(Request.GET_VRING_BASE.id).u32(0)).isZero();
            assertThat(r.stderr()).doesNotContain("\tat ").doesNotContain("more than 8 fds");
            r.process().destroy();
            assertThat(r.exit(15_000)).as(r.stderr()).isZero();
        }
    }

    /**
     * {@code serve --client} out of descriptors: its socket(2) fails with EMFILE, and it says so (before: it retried
     * in silence, as it does for a frontend that is not listening yet), in a bounded number of lines; once the limit
     * is back it connects and serves the frontend.
     */
    @Test
    void clientModeSaysWhyItCannotConnectAndConnectsOnceDescriptorsAreFree() throws Exception {
        Path c = dir.resolve("c.sock");
        try (Launcher.Run r = Launcher.start(dir, "client", Launcher.command("serve", "--socket-path", c.toString(),
                "--loopback", "--client"))) {
            r.awaitErr("connecting to .*c\\.sock", START_MS);
            long pid = r.process().pid();
            String soft = softLimit(pid);
            prlimit(pid, "3:");
            try (UnixSocket listening = UnixSocket.listen(c, 4)) {
                r.awaitErr("c.sock: cannot connect \\(2 in a row\\): socket: Too many open files", 10_000);
                assertThat(listening.poll(Fd.POLLIN, 0)).as("nothing connected").isZero();
                prlimit(pid, soft + ":");
                assertThat(listening.poll(Fd.POLLIN, 5_000)).as("serve connects").isNotZero();
                try (RawPeer fe = RawPeer.over(listening.accept()); GuestRam ram = new GuestRam()) {
                    negotiate(fe, BASIC_PF);
                    fe.ok(Request.SET_MEM_TABLE, ram.memTable(), ram.fd());
                }
            }
            r.awaitErr("c\\.sock#1: session closed", 5_000);
            assertThat(r.stderr()).doesNotContain("\tat ");
            r.process().destroy();
            assertThat(r.exit(15_000)).as(r.stderr()).isZero();
        }
    }

    /**
     * A TAP queue's io_uring is set up when its first TX frame comes; out of descriptors, io_uring_setup fails with
     * EMFILE. The frames go by writev meanwhile (the TAP gets every one), the line says so, and once descriptors are
     * free the queue is back on io_uring, in the log and in {@code mqvirtio_queue_io_info}. Before, that failure
     * turned io_uring off for the queue until serve restarted, as a kernel that refuses io_uring does. A pair the
     * frontend disables and enables meanwhile has its TAP queue detached and attached again, and sends.
     */
    @Test
    void tapTxGoesByWritevWhileIoUringCannotBeSetUpAndBackOnceDescriptorsAreFree() throws Exception {
        assumeTrue(Files.exists(Path.of("/dev/net/tun")) && TestNetns.isRoot(), "needs root and /dev/net/tun");
        assumeTrue(IoUring.unavailable() == null, "io_uring: " + IoUring.unavailable());
        Path sock = dir.resolve("t.sock");
        String tap = "mqvf" + Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000, 0x100000));
        try (TestNetns ns = TestNetns.create()) {
            ns.ip("link", "set", "lo", "up");
            List<String> cmd = new ArrayList<>(List.of("ip", "netns", "exec", ns.name()));
            cmd.addAll(Launcher.command("serve", "--socket-path", sock.toString(), "--tap", tap, "--queues", "2",
                    "--metrics", "127.0.0.1:0"));
            try (Launcher.Run r = Launcher.start(dir, "tap", cmd)) {
                int port = Integer.parseInt(r.awaitErr("metrics on http://127\\.0\\.0\\.1:(\\d+)/metrics", START_MS));
                assertThat(r.stderr()).contains("TX through io_uring");
                ns.ip("link", "set", tap, "up");
                long pid = r.process().pid(); // ip netns exec execs serve: the same process
                String soft = softLimit(pid);
                try (NetDriver nic = NetDriver.connect(sock, NetDriver.Options.pairs(2)); Arena a = Arena.ofConfined()) {
                    long base = tapReceived(ns, tap);
                    prlimit(pid, "3:");
                    int sent = 0;
                    for (; sent < 5; sent++) {
                        nic.pair(0).send(io.mqvirtio.capture.CaptureTest.frame(a, 0, sent, 300));
                    }
                    r.awaitErr("tap " + tap + ": queue 0: io_uring set-up failed: io_uring_setup: Too many open files "
                            + "\\(errno 24\\); its TX goes by writev until a descriptor is free", 10_000);
                    awaitTapReceived(ns, tap, base + sent);
                    // A pair disabled and enabled again (ethtool -L) detaches and attaches its TAP queue (TUNSETQUEUE
                    // on the queue's open descriptor): no new descriptor, so it works, and so does its TX
                    nic.setQueuePairs(1);
                    nic.setQueuePairs(2);
                    for (int i = 0; i < 3; i++) {
                        nic.pair(1).send(io.mqvirtio.capture.CaptureTest.frame(a, 1, sent++, 300));
                    }
                    awaitTapReceived(ns, tap, base + sent);
                    prlimit(pid, soft + ":");
                    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
                    while (!r.stderr().contains("tap " + tap + ": queue 0: TX through io_uring again")) {
                        assertThat(System.nanoTime()).as(r.stderr()).isLessThan(deadline);
                        nic.pair(0).send(io.mqvirtio.capture.CaptureTest.frame(a, 0, sent++, 300));
                        Thread.sleep(100);
                    }
                    for (int i = 0; i < 5; i++) {
                        nic.pair(0).send(io.mqvirtio.capture.CaptureTest.frame(a, 0, sent++, 300));
                    }
                    awaitTapReceived(ns, tap, base + sent);
                }
                Launcher.Http prom = ns.inside(() -> Launcher.get("127.0.0.1", port, "/metrics"));
                assertThat(prom.body()).contains("mqvirtio_queue_io_info{device=\"t.sock\",direction=\"tx\","
                        + "method=\"io_uring\",queue=\"0\"} 1");
                assertThat(r.stderr()).doesNotContain("\tat ").doesNotContain("from now on");
                r.process().destroy();
                assertThat(r.exit(15_000)).as(r.stderr()).isZero();
            }
        }
    }

    /**
     * SIGTERM while serve is out of descriptors: it stops as always (exit status 0, its socket removed) and still
     * tells systemd STOPPING=1, through the socket it told READY=1 by (before: socket(2) for the notification failed
     * with EMFILE, a warning, and systemd was never told).
     */
    @Test
    void stopsAndTellsSystemdWhenOutOfDescriptors() throws Exception {
        Path sock = dir.resolve("n.sock");
        Path notify = dir.resolve("n.notify");
        try (io.mqvirtio.linux.SdNotify.Listener systemd = io.mqvirtio.linux.SdNotify.Listener.bind(notify.toString())) {
            List<String> cmd = new ArrayList<>(List.of("env", "NOTIFY_SOCKET=" + notify));
            cmd.addAll(Launcher.command("serve", "--socket-path", sock.toString(), "--loopback"));
            try (Launcher.Run r = Launcher.start(dir, "notify", cmd)) {
                assertThat(systemd.receive((int) START_MS)).as(r.stderr()).contains("READY=1");
                prlimit(r.process().pid(), "3:"); // env execs serve: the same process
                r.process().destroy();
                assertThat(r.exit(15_000)).as(r.stderr()).isZero();
                assertThat(systemd.receive(5_000)).as(r.stderr()).isEqualTo("STOPPING=1");
                assertThat(r.stderr()).doesNotContain("cannot notify systemd").doesNotContain("\tat ")
                        .contains("n.sock: stopped (SIGTERM)");
                assertThat(sock).doesNotExist();
            }
        }
    }

    /** Frames the TAP took from serve (its interface's rx_packets). */
    static long tapReceived(TestNetns ns, String tap) throws Exception {
        return Long.parseLong(ns.exec("cat", "/sys/class/net/" + tap + "/statistics/rx_packets").trim());
    }

    static void awaitTapReceived(TestNetns ns, String tap, long n) throws Exception {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
        while (tapReceived(ns, tap) < n) {
            assertThat(System.nanoTime()).as("frames into the TAP within 10 s").isLessThan(deadline);
            Thread.sleep(50);
        }
        assertThat(tapReceived(ns, tap)).isEqualTo(n);
    }

    /** A frontend connected to {@code sock} once serve listens there. */
    static RawPeer awaitConnect(Launcher.Run r, Path sock) throws Exception {
        r.awaitErr("listening on " + Pattern.quote(sock.toString()), START_MS);
        return RawPeer.connect(sock);
    }

    static String softLimit(long pid) throws Exception {
        return Files.readAllLines(Path.of("/proc/" + pid + "/limits")).stream()
                .filter(l -> l.startsWith("Max open files")).findFirst().orElseThrow().split("\\s+")[3];
    }

    /** What serve holds open: each descriptor's number and what it is, as /proc names it. */
    static String openFds(long pid) throws Exception {
        StringBuilder b = new StringBuilder();
        try (var s = Files.list(Path.of("/proc/" + pid + "/fd"))) {
            for (Path p : s.sorted(java.util.Comparator.comparingInt(x -> Integer.parseInt(x.getFileName().toString())))
                    .toList()) {
                try {
                    b.append(p.getFileName()).append(" -> ").append(Files.readSymbolicLink(p)).append('\n');
                } catch (java.io.IOException gone) {
                    // closed while we looked
                }
            }
        }
        return b.toString();
    }

    static void prlimit(long pid, String nofile) throws Exception {
        Process p = new ProcessBuilder("prlimit", "--pid", String.valueOf(pid), "--nofile=" + nofile)
                .redirectErrorStream(true).start();
        assertThat(p.waitFor(10, TimeUnit.SECONDS)).isTrue();
        assertThat(p.exitValue()).as(new String(p.getInputStream().readAllBytes())).isZero();
    }
}
