package io.mqvirtio.net;

import static org.assertj.core.api.Assertions.assertThat;

import static org.junit.jupiter.api.Assumptions.assumeTrue;

import io.mqvirtio.backend.LoopbackBackend;
import io.mqvirtio.backend.TapBackend;
import io.mqvirtio.linux.PacketSocket;
import io.mqvirtio.linux.TestNetns;
import io.mqvirtio.vhostuser.VhostUserServer;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.management.ManagementFactory;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.concurrent.ThreadLocalRandom;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * The data path allocates nothing per frame, on the device's worker and in our driver: garbage made per frame at
 * millions of frames a second means young collections many times a second, and each stops every thread of the
 * process, every VM's workers with them. Measured with the JVM's own per-thread count of bytes allocated, over frames
 * looped through our device (split, split with IN_ORDER, packed), sent to a TAP (writev, io_uring) and received from
 * one, after a warm-up. Each is measured over two windows and the smaller counts: what the JVM does once (a method
 * handle's code made when it gets hot, a recompilation) falls in one window, a cost per frame in both.
 *
 * <p>Before: 40 bytes per system call on the worker's and the driver's paths wherever the JIT did not remove the
 * slice the JDK makes of the errno capture segment at each call (1 to 5 bytes per frame in all), a slice per kick
 * read or signalled and per io_uring entry prepared.
 */
@Timeout(60)
class WorkerAllocationTest {
    private static final int WARMUP = 50_000;
    private static final int FRAMES = 500_000;
    /** What "nothing" allows for over a window: a log line, a lazily made structure. An object per burst is above it. */
    private static final long ZERO = 16 * 1024;
    private static final com.sun.management.ThreadMXBean MX =
            (com.sun.management.ThreadMXBean) ManagementFactory.getThreadMXBean();

    /** Something measured twice. */
    interface Window {
        void run() throws Exception;
    }

    /** The bytes each of {@code threads} allocated in the smaller of two runs of {@code w}. */
    private static long[] allocated(Window w, long... threads) throws Exception {
        long[] least = new long[threads.length];
        Arrays.fill(least, Long.MAX_VALUE);
        for (int round = 0; round < 2; round++) {
            long[] before = MX.getThreadAllocatedBytes(threads);
            w.run();
            long[] after = MX.getThreadAllocatedBytes(threads);
            for (int i = 0; i < threads.length; i++) {
                least[i] = Math.min(least[i], after[i] - before[i]);
            }
        }
        return least;
    }

    @TempDir
    Path dir;

    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"split", "split-inorder", "packed"})
    void loopingFramesAllocatesNothingPerFrame(String layout) throws Exception {
        long features = switch (layout) {
            case "split" -> NetDriver.WANTED_SPLIT & ~VirtioFeatures.bit(VirtioFeatures.F_IN_ORDER);
            case "split-inorder" -> NetDriver.WANTED_SPLIT;
            default -> NetDriver.WANTED;
        };
        try (NetDevice dev = new NetDevice(new NetDevice.Config("alloc", 1, 1500, false, new int[0], 0),
                new LoopbackBackend(1, 1500));
             VhostUserServer server = VhostUserServer.listen(dir.resolve("a.sock"), dev);
             NetDriver nic = NetDriver.connect(server.path(), NetDriver.Options.pairs(1).withFeatures(features));
             Arena arena = Arena.ofConfined()) {
            NetQueuePair q = nic.pair(0);
            MemorySegment frame = arena.allocate(64);
            frame.fill((byte) 0x5a);
            MemorySegment[] bufs = new MemorySegment[32];
            for (int i = 0; i < bufs.length; i++) {
                bufs[i] = arena.allocate(2048);
            }
            int[] lens = new int[bufs.length];
            long worker = dev.workerThreadIds()[0];
            long driver = Thread.currentThread().threadId();

            loop(q, frame, bufs, lens, WARMUP);
            long[] bytes = allocated(() -> loop(q, frame, bufs, lens, FRAMES), worker, driver);
            long w = bytes[0];
            long d = bytes[1];
            assertThat(w).as("bytes the worker allocated over %d frames (%s)", FRAMES, layout).isLessThan(ZERO);
            assertThat(d).as("bytes our driver allocated over %d frames (%s)", FRAMES, layout).isLessThan(ZERO);
        }
    }

    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"WRITEV", "IO_URING"})
    void sendingToATapAllocatesNothingPerFrame(String method) throws Exception {
        assumeTrue(TestNetns.isRoot(), "needs root");
        String tap = "mqva" + Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000));
        try (TestNetns ns = TestNetns.create()) {
            TapBackend backend = ns.inside(() -> TapBackend.open(tap, 1, TapBackend.TxMethod.valueOf(method)));
            ns.ip("link", "set", tap, "up");
            try (NetDevice dev = new NetDevice(new NetDevice.Config("talloc", 1, 1500, false, new int[0], 0), backend);
                 VhostUserServer server = VhostUserServer.listen(dir.resolve("t.sock"), dev);
                 NetDriver nic = NetDriver.connect(server.path(), NetDriver.Options.pairs(1));
                 Arena arena = Arena.ofConfined()) {
                NetQueuePair q = nic.pair(0);
                MemorySegment frame = arena.allocate(64);
                frame.fill((byte) 0x5a);
                long worker = dev.workerThreadIds()[0];
                send(q, frame, dev, WARMUP);
                long w = allocated(() -> send(q, frame, dev, FRAMES), worker)[0];
                assertThat(w).as("bytes the worker allocated over %d frames to a TAP (%s)", FRAMES, method)
                        .isLessThan(ZERO);
            } finally {
                backend.close();
            }
        }
    }

    @Test
    void receivingFromATapAllocatesNothingPerFrame() throws Exception {
        assumeTrue(TestNetns.isRoot(), "needs root");
        String tap = "mqva" + Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000));
        try (TestNetns ns = TestNetns.create()) {
            TapBackend backend = ns.inside(() -> TapBackend.open(tap, 1, TapBackend.TxMethod.WRITEV));
            ns.ip("link", "set", tap, "up");
            try (NetDevice dev = new NetDevice(new NetDevice.Config("ralloc", 1, 1500, false, new int[0], 0), backend);
                 VhostUserServer server = VhostUserServer.listen(dir.resolve("r.sock"), dev);
                 NetDriver nic = NetDriver.connect(server.path(), NetDriver.Options.pairs(1));
                 PacketSocket host = ns.inside(() -> PacketSocket.open(tap));
                 Arena arena = Arena.ofConfined()) {
                NetQueuePair q = nic.pair(0);
                MemorySegment frame = arena.allocate(64);
                frame.fill((byte) 0xff); // broadcast, then an experimental ethertype: the TAP hands it to our queue
                frame.set(ValueLayout.JAVA_BYTE, 6, (byte) 0x02);
                frame.set(ValueLayout.JAVA_BYTE, 12, (byte) 0x88);
                frame.set(ValueLayout.JAVA_BYTE, 13, (byte) 0xb5);
                PacketSocket.Batch batch = new PacketSocket.Batch(arena, 32);
                for (int i = 0; i < 32; i++) {
                    batch.set(i, frame);
                }
                MemorySegment[] bufs = new MemorySegment[32];
                for (int i = 0; i < bufs.length; i++) {
                    bufs[i] = arena.allocate(2048);
                }
                int[] lens = new int[bufs.length];
                long worker = dev.workerThreadIds()[0];
                receive(q, host, batch, bufs, lens, WARMUP);
                long w = allocated(() -> receive(q, host, batch, bufs, lens, FRAMES / 5), worker)[0];
                assertThat(w).as("bytes the worker allocated over %d frames from a TAP", FRAMES / 5).isLessThan(ZERO);
            } finally {
                backend.close();
            }
        }
    }

    /** Has the host send {@code n} frames to the TAP, 32 at a time, each batch received before the next. */
    private static void receive(NetQueuePair q, PacketSocket host, PacketSocket.Batch batch, MemorySegment[] bufs,
                                int[] lens, int n) {
        long deadline = System.nanoTime() + 60_000_000_000L;
        int got = 0;
        while (got < n) {
            int sent = host.send(batch, 32);
            int want = got + Math.max(sent, 0);
            long batchDeadline = System.nanoTime() + 200_000_000L;
            while (got < want && System.nanoTime() < batchDeadline) {
                int k = q.receive(bufs, lens, bufs.length);
                got += k;
                if (k == 0) {
                    q.awaitReceive(20);
                }
            }
            got = Math.max(got, want); // a frame the kernel dropped (a full queue) is not waited for
            if (System.nanoTime() > deadline) {
                throw new AssertionError("received " + got + " of " + n + " frames in 60 s");
            }
        }
    }

    /** Sends {@code n} frames in bursts of up to 32, as fast as the ring takes them, and waits for the worker's count. */
    private static void send(NetQueuePair q, MemorySegment frame, NetDevice dev, int n) throws InterruptedException {
        MemorySegment[] burst = new MemorySegment[32];
        Arrays.fill(burst, frame);
        long before = dev.counters().get(1).packets() + dev.counters().get(1).drops() + dev.counters().get(1).errors();
        int sent = 0;
        long deadline = System.nanoTime() + 60_000_000_000L;
        while (sent < n) {
            int k = q.send(burst, 0, Math.min(32, n - sent));
            sent += k;
            if (k == 0) {
                Thread.onSpinWait();
            }
            if (System.nanoTime() > deadline) {
                throw new AssertionError("sent " + sent + " of " + n + " frames in 60 s");
            }
        }
        while (dev.counters().get(1).packets() + dev.counters().get(1).drops() + dev.counters().get(1).errors()
                < before + n) {
            Thread.sleep(1);
        }
    }

    /**
     * Sends {@code n} frames in bursts of up to 32 and receives each back (the loopback turns TX into RX), waiting in
     * {@link NetQueuePair#awaitReady} whenever neither moved.
     */
    private static void loop(NetQueuePair q, MemorySegment frame, MemorySegment[] bufs, int[] lens, int n) {
        MemorySegment[] burst = new MemorySegment[32];
        Arrays.fill(burst, frame);
        int sent = 0;
        int got = 0;
        long deadline = System.nanoTime() + 60_000_000_000L;
        while (got < n) {
            boolean mayGo = sent - got < 64 && sent < n;
            int took = mayGo ? q.send(burst, 0, Math.min(32, n - sent)) : 0;
            sent += took;
            int k = q.receive(bufs, lens, bufs.length);
            got += k;
            if (k == 0 && took == 0) { // the driver's waits count too: a frame back, or room in the TX ring
                q.awaitReady(NetQueuePair.RX_READY | (mayGo ? NetQueuePair.TX_ROOM : 0), 100);
            }
            if (System.nanoTime() > deadline) {
                throw new AssertionError("looped " + got + " of " + n + " frames in 30 s");
            }
        }
    }
}
