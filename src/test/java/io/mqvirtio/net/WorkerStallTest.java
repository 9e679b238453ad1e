package io.mqvirtio.net;

import static io.mqvirtio.virtio.SplitRing.DESC_F_WRITE;
import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.backend.LoopbackBackend;
import io.mqvirtio.linux.EventFd;
import io.mqvirtio.vhostuser.VhostUserServer;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.management.ManagementFactory;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A frontend that tries to hold a worker, or to make it spin. Holding: it clears O_NONBLOCK on the call eventfd it
 * shares with us and fills the counter to its limit, so that our next notification write would wait for good.
 * Spinning: it posts receive buffers a waiting frame cannot use. Either way the worker is bounded (released within
 * the watchdog's period, or asleep until a kick), the control thread gets its answers, and other devices never
 * notice.
 */
@Timeout(60)
class WorkerStallTest {
    static final int SIZE = 64;
    static final long FEATURES = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioNet.F_MQ)
            | VirtioFeatures.bit(VirtioNet.F_MRG_RXBUF);

    @TempDir
    Path dir;
    NetDevice victim;
    VhostUserServer victimServer;
    NetDevice bystander;
    VhostUserServer bystanderServer;

    @BeforeEach
    void start() {
        victim = new NetDevice(NetDevice.Config.of("victim", 2), new LoopbackBackend(2, 1500));
        victimServer = VhostUserServer.listen(dir.resolve("victim.sock"), victim);
        bystander = new NetDevice(NetDevice.Config.of("bystander", 1), new LoopbackBackend(1, 1500));
        bystanderServer = VhostUserServer.listen(dir.resolve("bystander.sock"), bystander);
    }

    @AfterEach
    void stop() {
        victimServer.close();
        victim.close();
        bystanderServer.close();
        bystander.close();
    }

    /** Makes {@code e} blocking (the flag is on the open file we share with the backend) and fills its counter. */
    static void fillBlocking(EventFd e) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment v = a.allocate(ValueLayout.JAVA_LONG);
            v.set(ValueLayout.JAVA_LONG, 0, 0xffff_ffff_ffff_fffeL);
            // while still non-blocking: the backend may have signalled it already (a write would then wait)
            do {
                e.drain();
            } while (e.write(v) != 8);
        }
        e.setNonBlocking(false);
        assertThat(e.isFull()).isTrue();
    }

    /** CPU time the worker threads of {@code d} use over {@code ms} milliseconds, in ms. */
    static long workerCpuMillis(NetDevice d, long ms) throws InterruptedException {
        long before = sum(d.workerCpuNanos());
        Thread.sleep(ms);
        return (sum(d.workerCpuNanos()) - before) / 1_000_000;
    }

    private static long sum(long[] a) {
        long s = 0;
        for (long x : a) {
            s += x;
        }
        return s;
    }

    @Test
    void aFilledCallEventfdHoldsTheWorkerForAMomentOnlyAndBreaksItsRing() throws Exception {
        try (EvilDriver d = new EvilDriver(victimServer.path(), 2, SIZE, FEATURES, 1 << 20)) {
            fillBlocking(d.tx(0).call);
            HostileDriverTest.sendValid(d, 0, HostileDriverTest.frame(100, 1), 0);
            // the worker uses the chain and wants to notify: that write would wait for good without the watchdog
            HostileDriverTest.await(() -> victim.counters().get(1).errors() > 0, "the TX ring of pair 0 to break");
            assertThat(d.tx(0).usedIdx()).isEqualTo(1);
            // the control thread is answered at once: the worker is free again
            long t0 = System.nanoTime();
            assertThat(d.fe.getVringBase(1)).isEqualTo(1);
            assertThat(TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0)).isLessThan(2000);
            assertThat(victim.deadReason()).isNull();
            // the pair's other ring, the other pair and the other device go on
            HostileDriverTest.sendValid(d, 1, HostileDriverTest.frame(100, 2), 0);
            HostileDriverTest.await(() -> d.tx(1).usedIdx() == 1, "pair 1 to send");
            HostileDriverTest.assertEchoes(bystanderServer.path(), 1, 0);
        }
        // the session ends cleanly and the socket serves the next frontend in full
        HostileDriverTest.assertEchoes(victimServer.path(), 2, 0);
    }

    /**
     * The call eventfd is filled before its ring starts: the start signals it once (a backend that restarted may
     * owe the driver a notification). Without a bound that start command never returned, timed out, and ran later
     * on memory the session had unmapped by then: the JVM crashed.
     */
    @Test
    void aCallEventfdFilledBeforeTheRingStartsDoesNotHoldTheStart() throws Exception {
        long t0 = System.nanoTime();
        try (EvilDriver d = new EvilDriver(victimServer.path(), 2, SIZE, FEATURES, 1 << 20, r -> {
            if (r.index == 0) {
                fillBlocking(r.call);
            }
        })) {
            assertThat(TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0)).as("set-up time").isLessThan(5000);
            HostileDriverTest.await(() -> victim.counters().get(0).errors() > 0, "the RX ring of pair 0 to break");
            assertThat(d.fe.getVringBase(0)).isZero();
            assertThat(victim.deadReason()).isNull();
        }
        HostileDriverTest.assertEchoes(victimServer.path(), 2, 1);
        HostileDriverTest.assertEchoes(victimServer.path(), 2, 0);
    }

    /**
     * A frontend that fills its call eventfd again after each release and restarts the ring (whose start signals it)
     * holds the worker 50 to 100 ms each time, and each release was a WARNING of the eventfd watchdog's own, outside
     * any allowance: ten lines a second from one VM into the log every VM shares. Now a thread's first release is
     * logged, the rest at DEBUG (each also breaks its ring, which the device's allowance reports).
     */
    @Test
    void aCallEventfdFilledAgainAndAgainIsLoggedOnce() throws Exception {
        int rounds = 20;
        try (io.mqvirtio.vhostuser.LogCapture log = new io.mqvirtio.vhostuser.LogCapture("io.mqvirtio",
                     java.util.logging.Level.WARNING).quiet();
             EvilDriver d = new EvilDriver(victimServer.path(), 2, SIZE, FEATURES, 1 << 20)) {
            for (int i = 0; i < rounds; i++) {
                d.tx(0).call.setNonBlocking(true);
                fillBlocking(d.tx(0).call);
                d.fe.setVringKick(1, d.tx(0).kick); // restarts the ring: its start signals the filled call eventfd
                long broken = i + 1;
                HostileDriverTest.await(() -> victim.counters().get(1).errors() == broken, "the TX ring to break");
            }
            assertThat(log.lines().stream().filter(l -> l.contains("released a write")).count())
                    .as("lines about %d writes released on one worker's thread", rounds).isLessThanOrEqualTo(1);
            assertThat(victim.deadReason()).isNull();
        }
        HostileDriverTest.assertEchoes(bystanderServer.path(), 1, 0);
    }

    /** A well-behaved frontend whose call counter is high but not full is notified as always, never drained. */
    @Test
    void aHighButNotFullCallCounterIsLeftAlone() throws Exception {
        try (EvilDriver d = new EvilDriver(victimServer.path(), 2, SIZE, FEATURES, 1 << 20)) {
            d.tx(0).call.setNonBlocking(false);
            try (Arena a = Arena.ofConfined()) {
                MemorySegment v = a.allocate(ValueLayout.JAVA_LONG);
                v.set(ValueLayout.JAVA_LONG, 0, 1000L);
                d.tx(0).call.write(v);
            }
            for (int i = 0; i < 5; i++) {
                HostileDriverTest.sendValid(d, 0, HostileDriverTest.frame(100, i), i);
                int want = i + 1;
                HostileDriverTest.await(() -> d.tx(0).usedIdx() == want, "frame " + i + " to be sent");
            }
            Thread.sleep(200); // four watchdog periods
            assertThat(victim.counters().get(1).errors()).isZero();
            assertThat(d.tx(0).call.drain()).as("the counter: what we put there and the notifications").isGreaterThan(1000);
        }
    }

    /**
     * The only RX buffer posted is shorter than the virtio-net header, and a frame waits for it. The worker used to
     * hand the chain back, find it available again, and loop at 100 % of a core; now the ring breaks (the driver
     * broke VIRTIO 1.3 5.1.6.3.1) and the worker sleeps.
     */
    @Test
    void anRxBufferShorterThanTheHeaderBreaksTheRingAndNothingSpins() throws Exception {
        try (EvilDriver d = new EvilDriver(victimServer.path(), 2, SIZE, FEATURES, 1 << 20)) {
            long off = d.alloc(64);
            d.rx(0).desc(0, d.gpa(off), 4, DESC_F_WRITE, 0);
            d.rx(0).offer(0);
            d.rx(0).kick();
            HostileDriverTest.sendValid(d, 0, HostileDriverTest.frame(100, 1), 0);
            HostileDriverTest.await(() -> victim.counters().get(0).errors() > 0, "the RX ring of pair 0 to break");
            assertThat(d.rx(0).usedIdx()).isZero();
            assertThat(workerCpuMillis(victim, 1000)).as("worker CPU over 1 s, ms").isLessThan(150);
        }
    }

    /**
     * A frame bigger than the buffers posted so far is parked until the driver posts more: the worker waits for a
     * kick, it does not spin on the buffers it gave back; then the frame arrives whole.
     */
    @Test
    void aParkedFrameWaitsForAKickWithoutSpinning() throws Exception {
        try (EvilDriver d = new EvilDriver(victimServer.path(), 2, SIZE, FEATURES, 1 << 20)) {
            EvilDriver.Ring rx = d.rx(0);
            long[] buf = new long[8];
            for (int i = 0; i < buf.length; i++) {
                buf[i] = d.alloc(256);
                rx.desc(i, d.gpa(buf[i]), 256, DESC_F_WRITE, 0);
            }
            rx.offer(0);
            rx.offer(1);
            rx.kick();
            byte[] f = HostileDriverTest.frame(1000, 3); // 1012 bytes with the header: four 256-byte buffers
            HostileDriverTest.sendValid(d, 0, f, 0);
            HostileDriverTest.await(() -> d.tx(0).usedIdx() == 1, "the frame to be sent");
            Thread.sleep(200);
            assertThat(rx.usedIdx()).as("nothing delivered into two buffers").isZero();
            assertThat(workerCpuMillis(victim, 1000)).as("worker CPU over 1 s, ms").isLessThan(150);
            for (int i = 2; i < buf.length; i++) {
                rx.offer(i);
            }
            rx.kick();
            HostileDriverTest.await(() -> rx.usedIdx() == 4, "the frame in four buffers");
            byte[] got = new byte[1012];
            for (int i = 0; i < 4; i++) {
                int[] u = rx.nextUsed();
                MemorySegment.copy(d.mem, ValueLayout.JAVA_BYTE, buf[u[0]], got, 256 * i, u[1]);
            }
            assertThat(got[10] | got[11] << 8).as("num_buffers").isEqualTo(4);
            byte[] frame = java.util.Arrays.copyOfRange(got, 12, 1012);
            assertThat(frame).isEqualTo(f);
            assertThat(victim.counters().get(0).errors()).isZero();
        }
    }

    /**
     * A frame that can never fit the ring (all of a small ring's buffers hold less) is dropped and counted, instead
     * of waiting for buffers that cannot come; the next frame that fits is delivered.
     */
    @Test
    void aFrameThatCanNeverFitIsDroppedNotWaitedFor() throws Exception {
        int size = 8;
        try (EvilDriver d = new EvilDriver(victimServer.path(), 2, size, FEATURES, 1 << 20)) {
            EvilDriver.Ring rx = d.rx(0);
            for (int i = 0; i < size; i++) {
                long b = d.alloc(64);
                rx.desc(i, d.gpa(b), 64, DESC_F_WRITE, 0);
                rx.offer(i);
            }
            rx.kick();
            HostileDriverTest.sendValid(d, 0, HostileDriverTest.frame(1000, 4), 0);
            HostileDriverTest.await(() -> victim.counters().get(0).drops() == 1, "the frame to be dropped");
            HostileDriverTest.sendValid(d, 0, HostileDriverTest.frame(60, 5), 1);
            HostileDriverTest.await(() -> rx.usedIdx() == 2, "the small frame in two buffers");
            assertThat(victim.counters().get(0).errors()).isZero();
            assertThat(workerCpuMillis(victim, 500)).as("worker CPU over 0.5 s, ms").isLessThan(100);
        }
    }

    /**
     * A sanity check that the measurement above can see a spin: a spinning thread's CPU time grows past 200 ms. Given
     * up to 5 s of wall time for it, as the share of a CPU a spinner gets depends on what else the machine runs (137 ms
     * in 0.5 s with a load of 8 on 2 CPUs).
     */
    @Test
    void theCpuMeasurementSeesABusyThread() throws Exception {
        java.util.concurrent.atomic.AtomicBoolean stop = new java.util.concurrent.atomic.AtomicBoolean();
        Thread t = Thread.ofPlatform().daemon(true).start(() -> {
            long end = System.nanoTime() + 6_000_000_000L;
            while (!stop.get() && System.nanoTime() < end) {
                Thread.onSpinWait();
            }
        });
        var mx = ManagementFactory.getThreadMXBean();
        long before = mx.getThreadCpuTime(t.threadId());
        long deadline = System.nanoTime() + 5_000_000_000L;
        long used = 0;
        while (used <= 200 && System.nanoTime() < deadline) {
            Thread.sleep(50);
            used = (mx.getThreadCpuTime(t.threadId()) - before) / 1_000_000;
        }
        stop.set(true);
        t.join();
        assertThat(used).as("a spinning thread's CPU ms, within 5 s").isGreaterThan(200);
    }
}
