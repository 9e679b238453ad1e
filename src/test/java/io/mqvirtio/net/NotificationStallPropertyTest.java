package io.mqvirtio.net;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.backend.LoopbackBackend;
import io.mqvirtio.vhostuser.VhostUserServer;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import java.util.concurrent.locks.LockSupport;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * No lost wake-up between our driver and our device: a pair's thread sends frames and waits for them to come back
 * (loopback) only through notifications, never by polling the RX ring: {@link NetQueuePair#awaitReceive} sleeps on
 * the call eventfd, so a call the device does not send (a wrong used_event / off_wrap decision, a missed store-load
 * fence) stalls it, and a kick the driver does not send (a wrong avail_event decision, a worker that slept with work
 * pending) stalls the device's TX or its wait for RX buffers. Every layout (split, packed), with and without
 * IN_ORDER and EVENT_IDX, tiny rings (2 and 8 entries, so that the indexes and wrap counters turn over all the time),
 * workers that sleep at once or poll for a window first. The thread pauses at random (so the worker goes to sleep),
 * sends bursts of random size within a random window of frames in flight (below the loopback's FIFO, so nothing is
 * dropped), and leaves frames in the RX ring at random (so that the device runs out of buffers and waits for a kick).
 * Holds: every frame comes back, once, in order, byte for byte, and no wait with frames in flight ends without one
 * ({@link #STALL_MS}). Seeded ({@code -Dstall.seed}); {@code -Dstall.millis} per case (default 200) for a soak.
 */
@Timeout(300)
class NotificationStallPropertyTest {
    private static final long CASE_NANOS = TimeUnit.MILLISECONDS.toNanos(Long.getLong("stall.millis", 200));
    /** Longest a wait with frames in flight may last: far beyond any wake-up, even on a loaded machine. */
    private static final int STALL_MS = 3000;
    private static final ValueLayout.OfInt BE32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.BIG_ENDIAN);

    @TempDir
    Path dir;

    record Case(boolean packed, boolean inOrder, boolean eventIdx, int ringSize) {
        long features() {
            long f = NetDriver.WANTED;
            if (!packed) {
                f &= ~VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED);
            }
            if (!inOrder) {
                f &= ~VirtioFeatures.bit(VirtioFeatures.F_IN_ORDER);
            }
            if (!eventIdx) {
                f &= ~VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX);
            }
            return f;
        }

        @Override
        public String toString() {
            return (packed ? "packed" : "split") + (inOrder ? " in-order" : "") + (eventIdx ? " event-idx" : "")
                    + " ring " + ringSize;
        }
    }

    static List<Case> cases() {
        List<Case> c = new ArrayList<>();
        for (int ringSize : new int[] {2, 8}) {
            for (boolean packed : new boolean[] {false, true}) {
                for (boolean inOrder : new boolean[] {false, true}) {
                    for (boolean eventIdx : new boolean[] {true, false}) {
                        c.add(new Case(packed, inOrder, eventIdx, ringSize));
                    }
                }
            }
        }
        return c;
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void everyFrameComesBackWithoutPolling(Case k) throws Exception {
        long seed = Long.getLong("stall.seed", System.nanoTime());
        Random rnd = new Random(seed ^ ((k.packed() ? 8 : 0) | (k.inOrder() ? 4 : 0) | (k.eventIdx() ? 2 : 0) | (k.ringSize() == 8 ? 1 : 0)));
        int pollMicros = rnd.nextBoolean() ? 0 : 20 + rnd.nextInt(200);
        String what = k + ", poll window " + pollMicros + " µs, seed " + seed;
        LoopbackBackend loop = new LoopbackBackend(1, 1500);
        try (NetDevice device = new NetDevice(new NetDevice.Config("stall", 1, 1500, false, new int[0], pollMicros), loop);
             VhostUserServer server = VhostUserServer.listen(dir.resolve("stall.sock"), device);
             NetDriver nic = NetDriver.connect(server.path(), NetDriver.Options.pairs(1).withRingSize(k.ringSize())
                     .withFeatures(k.features()));
             Arena a = Arena.ofConfined()) {
            assertThat(VirtioFeatures.has(nic.features(), VirtioFeatures.F_EVENT_IDX)).as(what).isEqualTo(k.eventIdx());
            assertThat(VirtioFeatures.has(nic.features(), VirtioFeatures.F_RING_PACKED)).as(what).isEqualTo(k.packed());
            assertThat(VirtioFeatures.has(nic.features(), VirtioFeatures.F_IN_ORDER)).as(what).isEqualTo(k.inOrder());
            NetQueuePair q = nic.pair(0);
            MemorySegment[] frames = new MemorySegment[16];
            for (int i = 0; i < frames.length; i++) {
                frames[i] = a.allocate(1500);
            }
            int[] sentLen = new int[64]; // by sequence number, modulo: at most 48 in flight
            MemorySegment want = a.allocate(1500);
            MemorySegment[] bufs = new MemorySegment[64];
            int[] lens = new int[bufs.length];
            for (int i = 0; i < bufs.length; i++) {
                bufs[i] = a.allocate(2048);
            }
            int sent = 0;
            int got = 0;
            long waits = 0;
            long end = System.nanoTime() + CASE_NANOS;
            while (System.nanoTime() < end || got < sent) {
                assertThat(System.nanoTime() - end).as("frames still in flight 30 s after the last was sent (%s)", what)
                        .isLessThan(TimeUnit.SECONDS.toNanos(30));
                int window = 1 + rnd.nextInt(rnd.nextBoolean() ? 4 : 48);
                int room = window - (sent - got);
                if (room > 0 && System.nanoTime() < end) {
                    int n = 1 + rnd.nextInt(Math.min(room, 16));
                    MemorySegment[] burst = new MemorySegment[n];
                    for (int i = 0; i < n; i++) {
                        int len = 60 + rnd.nextInt(rnd.nextBoolean() ? 40 : 1440);
                        sentLen[(sent + i) % sentLen.length] = len;
                        burst[i] = fill(frames[i], sent + i, len);
                    }
                    sent += q.send(burst, 0, n);
                }
                switch (rnd.nextInt(8)) {
                    case 0 -> LockSupport.parkNanos(rnd.nextInt(1_000_000)); // the worker goes to sleep
                    case 1 -> {
                        continue; // the RX ring keeps what came: the device may run out of buffers
                    }
                    default -> { }
                }
                int r = q.receive(bufs, lens, 1 + rnd.nextInt(rnd.nextBoolean() ? 2 : bufs.length));
                for (int i = 0; i < r; i++, got++) {
                    assertThat(got).as("a frame nobody sent came back (%s)", what).isLessThan(sent);
                    assertThat(bufs[i].get(BE32, 14)).as("sequence number of frame %d (%s)", got, what).isEqualTo(got);
                    assertThat(lens[i]).as("length of frame %d (%s)", got, what).isEqualTo(sentLen[got % sentLen.length]);
                    assertThat(NetDriverContract.sameBytes(bufs[i], fill(want, got, lens[i]), lens[i]))
                            .as("bytes of frame %d (%s)", got, what).isTrue();
                }
                if (r == 0 && got < sent && (room <= 0 || rnd.nextBoolean())) {
                    waits++;
                    long t0 = System.nanoTime();
                    boolean woke = q.awaitReceive(STALL_MS);
                    long waited = System.nanoTime() - t0;
                    // at its timeout, awaitReceive still says true for a frame in the ring: a wait that long is the
                    // call that never came
                    assertThat(woke && waited < TimeUnit.MILLISECONDS.toNanos(STALL_MS))
                            .as("%d frames in flight and no call for %d ms: a lost wake-up (%s, sent %d, back %d, waits %d, "
                                    + "%s)", sent - got, TimeUnit.NANOSECONDS.toMillis(waited), what, sent, got, waits,
                                    counters(q)).isTrue();
                }
            }
            assertThat(loop.drops(0)).as(what).isZero();
            assertThat(q.rxCounters().errors()).as(what).isZero();
            assertThat(got).as(what).isEqualTo(sent).isGreaterThan(0);
        }
    }

    /** Frame {@code seq} of {@code len} bytes, written into {@code f}: a local EtherType, its number, a pattern. */
    private static MemorySegment fill(MemorySegment f, int seq, int len) {
        f.fill((byte) 0x02);
        f.set(ValueLayout.JAVA_BYTE, 0, (byte) 0x02);
        f.set(ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.BIG_ENDIAN), 12, (short) 0x88b5);
        f.set(BE32, 14, seq);
        for (int i = 18; i < len; i++) {
            f.set(ValueLayout.JAVA_BYTE, i, (byte) (seq * 31 + i));
        }
        return f.asSlice(0, len);
    }

    private static String counters(NetQueuePair q) {
        return "driver rx " + q.rxCounters() + " tx " + q.txCounters();
    }

    /**
     * A thread waits on a pair the driver disabled ({@link NetDriver#setQueuePairs}), the pair is enabled again, and
     * frames arrive: the wait ends with the first of them. Before, it waited out its whole timeout whatever came: the
     * wait of a disabled pair ended only at a call, and the device sends none, since the driver's interrupts were
     * still off from its last wait (its used_event crossed long ago; VRING_AVAIL_F_NO_INTERRUPT without EVENT_IDX),
     * and a disabled pair's wait does not turn them on. Both layouts, with and without EVENT_IDX.
     */
    @ParameterizedTest(name = "packed {0}, event index {1}")
    @CsvSource({"false,true", "false,false", "true,true", "true,false"})
    @Timeout(30)
    void aWaitOnADisabledPairEndsWithAFrameOnceItIsEnabledAgain(boolean packed, boolean eventIdx) throws Exception {
        FedPorts ports = new FedPorts(2);
        long features = new Case(packed, false, eventIdx, 64).features();
        try (NetDevice device = new NetDevice(NetDevice.Config.of("fed", 2), ports);
             VhostUserServer server = VhostUserServer.listen(dir.resolve("fed.sock"), device);
             NetDriver nic = NetDriver.connect(server.path(), NetDriver.Options.pairs(2).withFeatures(features));
             Arena a = Arena.ofConfined()) {
            NetQueuePair q = nic.pair(1);
            MemorySegment buf = a.allocate(2048);
            // a first frame, waited for and taken: the pair's interrupts are off again, as after any wait
            ports.feed(1, 1);
            MemorySegment wakeUp = fill(a.allocate(60), 0, 60);
            assertThat(q.send(wakeUp)).as("a frame out, whose kick has the worker read the port").isEqualTo(1);
            assertThat(q.awaitReceive(5000)).isTrue();
            assertThat(q.receive(new MemorySegment[] {buf}, new int[1], 1)).isEqualTo(1);
            nic.setQueuePairs(1);
            AtomicReference<Object> result = new AtomicReference<>();
            AtomicLong endedAt = new AtomicLong();
            Thread waiter = Thread.ofPlatform().daemon().start(() -> {
                try {
                    result.set(q.awaitReceive(4000));
                } catch (Throwable e) {
                    result.set(e);
                }
                endedAt.set(System.nanoTime());
            });
            try {
                Thread.sleep(300); // the thread waits on the disabled pair
                assertThat(waiter.isAlive()).as("the wait on a disabled pair goes on").isTrue();
                ports.feed(1, 2); // waits at the host for the pair's RX ring, which is disabled
                long enabledAt = System.nanoTime();
                nic.setQueuePairs(2); // the worker's next round delivers it
                waiter.join(8000);
                assertThat(result.get()).as("the wait's result").isEqualTo(true);
                assertThat(TimeUnit.NANOSECONDS.toMillis(endedAt.get() - enabledAt))
                        .as("ms from the pair's enabling and its frame to the end of the wait").isLessThan(2000);
                int[] len = new int[1];
                assertThat(q.receive(new MemorySegment[] {buf}, len, 1)).isEqualTo(1);
                assertThat(buf.get(BE32, 14)).isEqualTo(2);
            } finally {
                nic.close();
                waiter.join(5000);
            }
        }
    }

    /** Ports whose RX frames the test hands over ({@link #feed}); what they are given to send they drop. */
    static final class FedPorts implements PacketBackend {
        private final int pairs;
        private final List<ConcurrentLinkedQueue<byte[]>> frames = new ArrayList<>();

        FedPorts(int pairs) {
            this.pairs = pairs;
            for (int i = 0; i < pairs; i++) {
                frames.add(new ConcurrentLinkedQueue<>());
            }
        }

        /**
         * Queues frame {@code seq} (60 bytes, numbered as {@link #fill} numbers them) for pair {@code pair}'s RX: its
         * worker delivers it at its next round (a port without a descriptor is read at each).
         */
        void feed(int pair, int seq) {
            byte[] f = new byte[VirtioNet.HDR_SIZE + 60];
            fill(MemorySegment.ofArray(f).asSlice(VirtioNet.HDR_SIZE), seq, 60);
            frames.get(pair).add(f);
        }

        @Override
        public int maxPairs() {
            return pairs;
        }

        @Override
        public long features() {
            return 0;
        }

        @Override
        public Port open(int pair) {
            return OnePortBackend.fedPort(frames.get(pair));
        }

        @Override
        public String describe() {
            return "fed";
        }

        @Override
        public void close() {}
    }
}
