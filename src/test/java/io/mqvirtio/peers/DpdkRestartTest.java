package io.mqvirtio.peers;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.bench.Testpmd;
import io.mqvirtio.net.NetDevice;
import io.mqvirtio.net.QueueCounters;
import io.mqvirtio.vhostuser.Leaks;
import io.mqvirtio.vhostuser.VhostUserServer;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * DPDK's virtio-user (testpmd, {@code io} forwarding on its port looped to itself) restarted against our running
 * backend, mid-traffic: killed with SIGKILL (no goodbye: the socket just closes), told {@code quit} (it stops its
 * port: GET_VRING_BASE on every ring), or its port stopped and detached (testpmd closes it), then attached again in the same
 * testpmd: five sessions in a row on one device and one listening socket. Each new
 * session must be served (frames back on every pair, byte for byte, in order, none twice); the frames testpmd held
 * at a kill are lost, and only those. After each session the process holds what it held after the first one: as
 * many descriptors, memfd mappings and threads (no session thread or mapping of testpmd's memory left behind), and
 * each queue's counters only grow, with no error counted.
 */
@Tag("peer")
class DpdkRestartTest {
    static final int SESSIONS = 5;
    static final int WINDOW = 32;

    @TempDir
    Path dir;

    @ParameterizedTest(name = "\"{0}\" pairs {1}")
    @CsvSource(delimiter = '|', value = {"packed_vq=0,in_order=1|1", "packed_vq=0,in_order=0|2",
            "packed_vq=1,in_order=1|2", "packed_vq=1,in_order=0|1"})
    @Timeout(90)
    void eachNewTestpmdIsServedAndTheOldOneLeavesNothing(String devargs, int pairs) throws Exception {
        Path sock = dir.resolve("vu.sock");
        EchoCheckBackend echo = new EchoCheckBackend(pairs, false);
        SplittableRandom rnd = new SplittableRandom(7);
        // how each session ends: the kill is the case that matters, a quit in between
        // (quit: its port stopped first, GET_VRING_BASE on every ring), and once the port detached and attached again
        // in the same testpmd (port stop, detach; attach, start)
        String[] endings = {"kill", "kill", "quit", "detach", "kill"};
        try (PeerLab lab = PeerLab.open(dir)) {
            lab.own(echo);
            NetDevice dev = lab.own(new NetDevice(NetDevice.Config.of("dpdk-restart", pairs), echo));
            lab.own(VhostUserServer.listen(sock, dev));
            Leaks baseline = null;
            int threads = 0;
            String baselineThreads = "";
            List<QueueCounters.Snapshot> before = dev.counters();
            String vdev = "net_virtio_user0,path=" + sock + ",queues=" + pairs + (pairs > 1 ? ",cq=1" : "") + ","
                    + devargs;
            Testpmd tp = null;
            for (int s = 0; s < SESSIONS; s++) {
                if (tp == null) {
                    tp = lab.testpmd("testpmd-" + s, vdev, pairs, "io", 0, "--port-topology=loop", "--no-flush-rx");
                }
                tp.command("start");
                // the frames the last testpmd took and never sent back are lost (counted as skipped once a later
                // frame comes back): they leave the window now
                // and so do the frames our device drops from a TX ring still disabled: DPDK's virtio-user enables a
                // pair's RX ring, then its TX ring, without waiting for either (no REPLY_ACK asked), and forwards at
                // once, so the first frames it sends back may reach the TX ring before we read its enable (the spec:
                // a started, disabled ring's TX frames are consumed and discarded)
                long[] backBefore = new long[pairs], lost = new long[pairs], skippedBefore = new long[pairs];
                long[] dropsBefore = new long[pairs];
                List<QueueCounters.Snapshot> atStart = dev.counters();
                for (EchoCheckBackend.Pair p : echo.pairs) {
                    dropsBefore[p.index] = atStart.get(2 * p.index + 1).drops();
                    backBefore[p.index] = p.back.get();
                    skippedBefore[p.index] = p.skipped.get();
                    lost[p.index] = p.taken.get() - p.back.get() - p.skipped.get();
                }
                // traffic until every pair has had 2000 frames back in this session (at most 20 s)
                long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
                boolean all = false;
                while (!all) {
                    String context = "session " + s + ": " + state(echo, dev) + Peers.tail(tp.log(), 20);
                    assertThat(System.nanoTime()).as("frames back in time%n%s", context).isLessThan(deadline);
                    assertThat(tp.isAlive()).as("testpmd exited%n%s", context).isTrue();
                    all = true;
                    boolean any = false;
                    List<QueueCounters.Snapshot> c = dev.counters();
                    for (EchoCheckBackend.Pair p : echo.pairs) {
                        long dropped = c.get(2 * p.index + 1).drops() - dropsBefore[p.index];
                        long unskipped = Math.max(0, lost[p.index] + dropped
                                - (p.skipped.get() - skippedBefore[p.index]));
                        while (p.inFlight() - unskipped < WINDOW) {
                            p.offer(rnd.nextInt(60, 1515));
                            any = true;
                        }
                        all &= p.back.get() - backBefore[p.index] >= 2000;
                    }
                    if (!any) {
                        Thread.onSpinWait();
                    }
                }
                if (endings[s].equals("kill")) {
                    ProcessHandle.of(tp.pid()).ifPresent(ProcessHandle::destroyForcibly); // SIGKILL, mid-flood
                } else if (endings[s].equals("quit")) {
                    tp.command("stop");
                    tp.command("quit");
                } else {
                    for (String c : new String[] {"stop", "port stop 0", "port detach 0"}) {
                        tp.command(c);
                    }
                }
                if (!endings[s].equals("detach")) {
                    long gone = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
                    while (tp.isAlive()) {
                        assertThat(System.nanoTime()).as("testpmd gone").isLessThan(gone);
                        Thread.sleep(20);
                    }
                    tp.close();
                }
                // the session ends: its thread goes, and with it testpmd's memory and the rings' eventfds
                long ended = System.nanoTime() + TimeUnit.SECONDS.toNanos(5);
                while (sessionThreads() > 0) {
                    assertThat(System.nanoTime()).as("session %d's thread still there%n%s", s, tp.tail())
                            .isLessThan(ended);
                    Thread.sleep(20);
                }
                List<QueueCounters.Snapshot> now = dev.counters();
                for (int q = 0; q < now.size(); q++) {
                    assertThat(now.get(q).packets()).as("queue %d's packets after session %d: %s", q, s, now.get(q))
                            .isGreaterThan(before.get(q).packets());
                    assertThat(now.get(q).errors()).as("queue %d's errors after session %d: %s", q, s, now.get(q))
                            .isZero();
                }
                before = now;
                if (baseline == null) {
                    baseline = Leaks.settleTo(Leaks.now(), 200); // after a first session: the process warmed up
                    threads = threads();
                    baselineThreads = threadNames();
                } else {
                    // a testpmd that detached its port lives on: the test's own pipes to it and its log stay open, so
                    // what is compared then is what a session holds (eventfds, epolls, sockets)
                    Leaks after = endings[s].equals("detach") ? Leaks.now() : Leaks.settleTo(baseline, 3000);
                    long settled = System.nanoTime() + TimeUnit.SECONDS.toNanos(3);
                    while (sessionFds(after) != sessionFds(baseline) && System.nanoTime() < settled) {
                        Thread.sleep(20);
                        after = Leaks.now();
                    }
                    assertThat(sessionFds(after)).as("eventfds, epolls and sockets after session %d%n%s%nbaseline%n%s",
                            s, after.describe(), baseline.describe()).isEqualTo(sessionFds(baseline));
                    assertThat(after.fds() - (endings[s].equals("detach") ? 4 : 0)).as("descriptors after session %d%n%s%nbaseline%n%s", s, after.describe(),
                            baseline.describe()).isEqualTo(baseline.fds());
                    assertThat(after.memfdMaps()).as("memfd mappings after session %d%n%s", s, after.describe())
                            .isEqualTo(baseline.memfdMaps());
                    long settle = System.nanoTime() + TimeUnit.SECONDS.toNanos(3);
                    while (threads() > threads && System.nanoTime() < settle) {
                        Thread.sleep(20);
                    }
                    assertThat(threads()).as("threads after session %d: %s%nafter the first: %s", s, threadNames(), baselineThreads)
                            .isLessThanOrEqualTo(threads);
                }
                if (endings[s].equals("detach")) {
                    tp.command("port attach " + vdev);
                    tp.command("port start all");
                } else {
                    tp = null;
                }
            }
            String context = state(echo, dev);
            System.out.println("RESTART \"" + devargs + "\" pairs " + pairs + ": " + context);
            for (EchoCheckBackend.Pair p : echo.pairs) {
                assertThat(p.malformed.get() + p.dupOrLate.get()).as("bad frames on pair %d%n%s", p.index, context)
                        .isZero();
                // only what testpmd held at a kill or quit may be lost (at most its window per session), and what our
                // device dropped from a TX ring not yet enabled
                assertThat(p.skipped.get()).as("frames lost on pair %d%n%s", p.index, context)
                        .isLessThanOrEqualTo((long) SESSIONS * WINDOW + dev.counters().get(2 * p.index + 1).drops());
            }
            QueueCounters.Snapshot rx0 = dev.counters().get(0);
            assertThat(rx0.packets()).as("frames to the frontend on pair 0%n%s", context)
                    .isGreaterThanOrEqualTo(echo.pairs[0].back.get());
        }
    }

    /** Threads of this process, the test's own readers of testpmd's output left out. */
    /**
     * Live threads of ours: the backend's (its workers, named after the device, its sessions' and its accept
     * thread, "vhost-user ...") and the process-wide ones of the project ("mqvirtio-..."). Threads that other test
     * classes of the same JVM left to come and go (the Prometheus client's scheduler, their sinks, the JDK's
     * process reapers) are not this test's to count: in the full suite one appeared during a session.
     */
    private static int threads() {
        return (int) Thread.getAllStackTraces().keySet().stream().filter(DpdkRestartTest::counted).count();
    }

    private static boolean counted(Thread t) {
        String n = t.getName();
        return t.isAlive() && (n.startsWith("dpdk-restart") || n.startsWith("vhost-user") || n.startsWith("mqvirtio-"));
    }

    private static String threadNames() {
        return Thread.getAllStackTraces().keySet().stream().filter(DpdkRestartTest::counted).map(Thread::getName)
                .sorted().toList().toString();
    }

    private static long sessionFds(Leaks l) {
        return l.fdTargets().stream().filter(t -> t.contains("anon_inode") || t.contains("socket:")).count();
    }

    private static long sessionThreads() {
        return Thread.getAllStackTraces().keySet().stream()
                .filter(t -> t.getName().startsWith("vhost-user ") && t.isAlive()).count();
    }

    private static String state(EchoCheckBackend echo, NetDevice dev) {
        StringBuilder b = new StringBuilder();
        List<QueueCounters.Snapshot> c = dev.counters();
        for (EchoCheckBackend.Pair p : echo.pairs) {
            b.append(String.format("%n  pair %d: offered %d taken %d back %d skipped %d dup/late %d malformed %d; "
                            + "rx %s; tx %s", p.index, p.offered.get(), p.taken.get(), p.back.get(), p.skipped.get(),
                    p.dupOrLate.get(), p.malformed.get(), c.get(2 * p.index), c.get(2 * p.index + 1)));
        }
        return b.append("\n  problems: ").append(echo.problems).append('\n').toString();
    }
}
