package io.mqvirtio.net;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import io.mqvirtio.linux.EventFd;
import io.mqvirtio.virtio.DriverRing;
import io.mqvirtio.virtio.ForwardingDriverRing;
import io.mqvirtio.virtio.PackedRing;
import io.mqvirtio.virtio.Rings;
import io.mqvirtio.virtio.SplitRing;
import io.mqvirtio.virtio.VirtioFeatures;
import io.mqvirtio.virtio.VirtqueueException;
import java.io.ByteArrayOutputStream;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.VarHandle;
import java.nio.ByteOrder;
import java.util.ArrayDeque;
import java.util.Arrays;
import java.util.Random;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * A queue pair's receive path against a device that acts between the driver's reads of its RX ring, as a backend
 * in another process can at any moment: here at exactly the moment that hurts, so that each race is run
 * deterministically. The pair runs over real rings in memory of the test's own; the "device" writes used entries
 * into them through a {@link DriverRing} that hands every call on to the real ring and lets the device act first
 * (or after).
 */
@Timeout(30)
class NetQueuePairHostileRingTest {
    static final int SIZE = 8;
    static final int BUF = 256;
    private static final ValueLayout.OfShort U16 = ValueLayout.JAVA_SHORT.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfInt U32 = ValueLayout.JAVA_INT.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final VarHandle U16_VH = U16.varHandle();

    /** The pair's RX ring: every call goes to the real ring; the device acts before a reap and after usedPending. */
    static final class Hooked extends ForwardingDriverRing {
        Runnable beforeReap = () -> {};
        Runnable afterUsedPending = () -> {};
        final ArrayDeque<Integer> added = new ArrayDeque<>(); // ids the driver wrote into the ring, in order

        Hooked(DriverRing ring) {
            super(ring);
        }

        @Override
        public int add(long[] addr, int[] len, int out, int in) {
            int id = ring.add(addr, len, out, in);
            added.add(id);
            return id;
        }

        @Override
        public int addBurst(long[] addr, int[] len, int n, boolean writable, int[] ids) {
            int k = ring.addBurst(addr, len, n, writable, ids);
            for (int i = 0; i < k; i++) {
                added.add(ids[i]);
            }
            return k;
        }

        @Override
        public int addIndirect(long[] addr, int[] len, int out, int in) {
            throw new UnsupportedOperationException();
        }

        @Override
        public int usedPending(int enough) {
            int n = ring.usedPending(enough);
            afterUsedPending.run();
            return n;
        }

        @Override
        public int reap() {
            beforeReap.run();
            return ring.reap();
        }
    }

    /** One queue pair over rings in the test's memory, and the device's side of its RX ring. */
    static final class Harness implements AutoCloseable {
        final Arena arena = Arena.ofShared();
        final boolean packed;
        final MemorySegment rxArea;
        final MemorySegment rxBufs;
        final Rings.Layout layout;
        final Hooked rx;
        final NetQueuePair q;
        int usedIdx;              // split: the device's used index
        int pos;                  // packed: the device's position and wrap counter
        boolean wrap = true;

        Harness(boolean packed, boolean inOrder, boolean mergeable) {
            this.packed = packed;
            long features = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1)
                    | (packed ? VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED) : 0)
                    | (inOrder ? VirtioFeatures.bit(VirtioFeatures.F_IN_ORDER) : 0);
            layout = Rings.layout(SIZE, features);
            rxArea = arena.allocate(layout.totalBytes(), 4096);
            MemorySegment txArea = arena.allocate(layout.totalBytes(), 4096);
            rxBufs = arena.allocate((long) SIZE * BUF, 64);
            MemorySegment txBufs = arena.allocate((long) SIZE * BUF, 64);
            rx = new Hooked(Rings.driver(SIZE, features, rxArea));
            q = new NetQueuePair(0, rx, Rings.driver(SIZE, features, txArea), EventFd.create(), EventFd.create(),
                    EventFd.create(), EventFd.create(), EventFd.create(), rxBufs, rxBufs.address(), txBufs,
                    txBufs.address(), BUF, mergeable, false, false);
            q.enabled = true;
        }

        /** Writes {@code numBuffers} into the header of the buffer the driver posted as {@code id} (slot = id here). */
        void header(int id, int numBuffers) {
            rxBufs.set(NetQueuePair.LE16, (long) id * BUF + VirtioNet.HDR_NUM_BUFFERS, (short) numBuffers);
        }

        /** Makes {@code id} used with {@code len} bytes: the used ring's next entry, or the next packed descriptor. */
        void use(int id, int len) {
            useBatch(id, 1, len);
        }

        /**
         * Makes a batch of {@code n} buffers used with one entry (IN_ORDER, 2.7.9): it names {@code lastId}, the
         * batch's last, with {@code len} bytes, where the batch's first would have its entry; the device's position
         * (split: its used index) moves on by {@code n} (every RX chain takes one descriptor).
         */
        void useBatch(int lastId, int n, int len) {
            if (packed) {
                long b = layout.descOffset() + (long) PackedRing.DESC_SIZE * pos;
                rxArea.set(U32, b + PackedRing.DESC_LEN, len);
                rxArea.set(U16, b + PackedRing.DESC_ID, (short) lastId);
                U16_VH.setRelease(rxArea, b + PackedRing.DESC_FLAGS,
                        (short) (wrap ? PackedRing.F_AVAIL | PackedRing.F_USED : 0));
                pos += n;
                if (pos >= SIZE) {
                    pos -= SIZE;
                    wrap = !wrap;
                }
            } else {
                long e = layout.usedOffset() + SplitRing.USED_RING + 8L * (usedIdx % SIZE);
                rxArea.set(U32, e, lastId);
                rxArea.set(U32, e + 4, len);
                usedIdx += n;
                U16_VH.setRelease(rxArea, layout.usedOffset() + SplitRing.USED_IDX, (short) usedIdx);
            }
        }

        @Override
        public void close() {
            q.close();
            arena.close();
        }
    }

    /**
     * A device sees each buffer the driver reposts the moment its descriptor and avail entry are written, before
     * they are published; one that used each of them at once (length 0: a frame shorter than its header, dropped
     * and counted) kept a single {@code receive} call reaping, dropping and reposting for as long as it went on:
     * dropped frames do not count against {@code max}, and the split ring took back buffers never made available
     * (the packed one too, until its list of descriptors to publish outgrew the ring: an
     * ArrayIndexOutOfBoundsException out of {@code receive}). Now only published buffers come back: the call ends
     * (the split ring breaks on a used index ahead of what was published; the packed one looks no further than its
     * published buffers).
     */
    @ParameterizedTest(name = "packed={0} inOrder={1}")
    @CsvSource({"false,false", "false,true", "true,false", "true,true"})
    void aDeviceThatUsesEachRepostedBufferAtOnceCannotHoldReceive(boolean packed, boolean inOrder) throws Exception {
        try (Harness h = new Harness(packed, inOrder, false)) {
            h.rx.added.clear();
            for (int id = 0; id < SIZE; id++) {
                h.use(id, 0);
            }
            boolean[] on = {true};
            long[] used = {SIZE};
            h.rx.beforeReap = () -> {
                while (on[0] && !h.rx.added.isEmpty()) {
                    h.use(h.rx.added.poll(), 0);
                    used[0]++;
                }
            };
            AtomicReference<Object> result = new AtomicReference<>();
            Thread t = Thread.ofPlatform().daemon().start(() -> {
                try (Arena a = Arena.ofConfined()) {
                    MemorySegment[] bufs = {a.allocate(BUF), a.allocate(BUF), a.allocate(BUF), a.allocate(BUF)};
                    result.set(h.q.receive(bufs, new int[4], 4));
                } catch (Throwable e) {
                    result.set(e);
                }
            });
            t.join(5000);
            boolean held = t.isAlive();
            on[0] = false; // the device stops: a driver still in the call gets out of it
            t.join(5000);
            assertThat(held).as("receive still reaping after 5 s; the device had used %d buffers", used[0]).isFalse();
            if (result.get() instanceof Throwable e) {
                assertThat(e).isInstanceOf(VirtqueueException.class).hasMessageContaining("made available");
                assertThat(h.rx.isBroken()).isTrue();
            } else {
                assertThat(result.get()).isEqualTo(0);
            }
            assertThat(h.q.rxCounters().errors()).as("frames dropped").isBetween(1L, (long) SIZE);
        }
    }

    /**
     * A packed device can take a used descriptor back (rewrite its flags) between the driver counting the used
     * buffers that follow a merged frame's head and reaping them: the reap then found nothing, and the receive
     * path, told by the count that it would not, indexed its slots with -1 (ArrayIndexOutOfBoundsException out of
     * {@code receive}). Now a buffer missing at the reap is a lie like num_buffers beyond the ring: the frame is
     * dropped and counted, and the ring goes on.
     */
    @Test
    void aPackedUsedDescriptorTakenBackAfterTheCountDropsTheFrame() throws Exception {
        try (Harness h = new Harness(true, false, true)) {
            h.header(0, 2);
            h.use(0, BUF);
            h.use(1, 100);
            long second = h.layout.descOffset() + PackedRing.DESC_SIZE + PackedRing.DESC_FLAGS;
            h.rx.afterUsedPending = () -> {
                h.rxArea.set(U16, second, (short) PackedRing.F_AVAIL); // available again, not used
                h.rx.afterUsedPending = () -> {};
            };
            h.pos = 1; // the device uses that descriptor again below
            assertThat(receive(h)).as("frames").isEqualTo(0);
            assertThat(h.q.rxCounters().errors()).as("errors").isEqualTo(1);
            assertThat(h.q.lastRxError()).contains("num_buffers 2");
            h.header(1, 1);
            h.use(1, VirtioNet.HDR_SIZE + 60);
            assertThat(receive(h)).as("the next frame").isEqualTo(1);
        }
    }

    /**
     * With IN_ORDER a split device can rewrite a used entry between the count and the reap so that it returns
     * fewer buffers (a batch of two named as one). The count is the used index (it counts buffers, 2.7.9), so the
     * reap goes on to the next slot, where the device wrote nothing: an entry naming a buffer not in flight breaks
     * the ring, as any such entry does (before the used index counted entries: the reap found nothing, and the
     * receive path once indexed its slots with -1).
     */
    @Test
    void anInOrderUsedEntryRewrittenAfterTheCountBreaksTheRing() throws Exception {
        try (Harness h = new Harness(false, true, true)) {
            h.header(0, 3);
            h.use(0, BUF);
            h.useBatch(2, 2, 100); // buffers 1 and 2 as one batch
            long entry1 = h.layout.usedOffset() + SplitRing.USED_RING + 8;
            h.rxArea.set(U32, entry1 + 8, SIZE + 1); // the slot after the batch's: nothing the device wrote
            h.rx.afterUsedPending = () -> {
                h.rxArea.set(U32, entry1, 1); // now names buffer 1 only
                h.rxArea.set(U32, entry1 + 4, BUF);
                h.rx.afterUsedPending = () -> {};
            };
            assertThatThrownBy(() -> receive(h)).isInstanceOf(VirtqueueException.class)
                    .hasMessageContaining("not a chain in flight");
            assertThat(h.rx.isBroken()).isTrue();
        }
    }

    /**
     * With IN_ORDER a device may use a batch of RX buffers with one entry naming the last (2.7.9, and its packed
     * twin): the buffers before it were used whole. A merged frame spread over several buffers, or frames filling
     * theirs, then come with one entry for the lot. The driver took the skipped buffers as used for 0 bytes (a frame
     * whose head had length 0 dropped as shorter than its header, its other buffers read as frames of their own or
     * as lies), and on a split ring moved its used index by one per entry, where the device moves it by the batch's
     * size (the next entry is read from the slot after the batch's first, which the device never wrote). Now a
     * skipped buffer has its posted length, as Linux's virtio_ring gives it (total_len), and the split used index
     * counts buffers: every frame arrives byte for byte.
     */
    @ParameterizedTest(name = "packed={0}")
    @CsvSource({"false", "true"})
    void mergedFramesUsedAsInOrderBatchesArriveWhole(boolean packed) throws Exception {
        try (Harness h = new Harness(packed, true, true)) {
            Random r = new Random(7);
            // frame A: buffers 0, 1, 2 (the last 100 bytes), one entry; frames B (buffer 3, full) and C (buffers 4
            // and 5, the last 70 bytes), one entry for the three; frame D: buffer 6 alone, an entry of its own
            int[][] frames = {{0, 1, 2}, {3}, {4, 5}, {6}};
            int[] lastLen = {100, BUF, 70, VirtioNet.HDR_SIZE + 60};
            byte[][] want = new byte[frames.length][];
            for (int f = 0; f < frames.length; f++) {
                int[] b = frames[f];
                ByteArrayOutputStream w = new ByteArrayOutputStream();
                for (int k = 0; k < b.length; k++) {
                    int l = k == b.length - 1 ? lastLen[f] : BUF;
                    byte[] bytes = new byte[l];
                    r.nextBytes(bytes);
                    int from = k == 0 ? VirtioNet.HDR_SIZE : 0;
                    if (k == 0) {
                        Arrays.fill(bytes, 0, VirtioNet.HDR_SIZE, (byte) 0);
                    }
                    MemorySegment.copy(bytes, 0, h.rxBufs, ValueLayout.JAVA_BYTE, (long) b[k] * BUF, l);
                    w.write(bytes, from, l - from);
                }
                h.header(b[0], b.length);
                want[f] = w.toByteArray();
            }
            h.useBatch(2, 3, 100);
            h.useBatch(5, 3, 70);
            h.use(6, VirtioNet.HDR_SIZE + 60);
            try (Arena a = Arena.ofConfined()) {
                MemorySegment[] bufs = new MemorySegment[5];
                for (int i = 0; i < bufs.length; i++) {
                    bufs[i] = a.allocate(4096);
                }
                int[] lengths = new int[bufs.length];
                int n = h.q.receive(bufs, lengths, bufs.length);
                assertThat(h.q.lastRxError()).as("the last receive error").isNull();
                assertThat(n).as("frames").isEqualTo(frames.length);
                for (int f = 0; f < frames.length; f++) {
                    assertThat(bufs[f].asSlice(0, lengths[f]).toArray(ValueLayout.JAVA_BYTE)).as("frame %d", f)
                            .isEqualTo(want[f]);
                }
            }
            assertThat(h.q.rxCounters().errors()).as("errors").isZero();
            assertThat(h.rx.isBroken()).isFalse();
            assertThat(h.rx.inFlight()).as("RX buffers posted again").isEqualTo(SIZE);
        }
    }

    /**
     * A split IN_ORDER entry naming a batch larger than the used index moved on by (the device says three buffers
     * are used, its index says two) is a lie: the ring breaks, and no buffer past the index is taken as used.
     */
    @Test
    void anInOrderBatchBeyondTheUsedIndexBreaksTheRing() throws Exception {
        try (Harness h = new Harness(false, true, true)) {
            h.header(0, 3);
            h.useBatch(2, 2, 100); // names buffer 2, the third, but moves the index by two
            assertThatThrownBy(() -> receive(h)).isInstanceOf(VirtqueueException.class)
                    .hasMessageContaining("the used index counts only 2");
            assertThat(h.rx.isBroken()).isTrue();
        }
    }

    /**
     * A backend that broke the RX ring (a used id out of range) and then took the entry back: a wait on the pair
     * ends at once, ready, and the receive after it says why, split and packed alike; and a lie the wait's own look
     * finds (a used index that jumps past the ring, a used descriptor naming an id not in flight, written while the
     * pair waits) ends it the same way. Before, the split ring's wait slept out its whole timeout (its look after each
     * slice counted on, from the index), the packed one's threw out of the wait, and a lie found by the look threw
     * out of the wait with either layout.
     */
    @ParameterizedTest(name = "packed={0} inOrder={1}")
    @CsvSource({"false,false", "false,true", "true,false", "true,true"})
    void aWaitOnAnRxRingTheBackendBrokeEndsAtOnceAndTheReceiveSaysWhy(boolean packed, boolean inOrder)
            throws Exception {
        try (Harness h = new Harness(packed, inOrder, false)) {
            h.use(SIZE + 3, 100);
            assertThatThrownBy(() -> receive(h)).isInstanceOf(VirtqueueException.class).hasMessageContaining("not");
            if (packed) { // the used descriptor available again, as the driver wrote it
                h.rxArea.set(U16, h.layout.descOffset() + PackedRing.DESC_FLAGS, (short) PackedRing.F_AVAIL);
            } else { // the used index back where the driver is
                U16_VH.setRelease(h.rxArea, h.layout.usedOffset() + SplitRing.USED_IDX, (short) 0);
            }
            assertWaitEndsReady(h, null);
        }
        try (Harness h = new Harness(packed, inOrder, false)) {
            assertWaitEndsReady(h, () -> {
                if (packed) {
                    h.use(SIZE + 3, 100);
                } else {
                    U16_VH.setRelease(h.rxArea, h.layout.usedOffset() + SplitRing.USED_IDX, (short) (SIZE + 1));
                }
            });
        }
    }

    /**
     * awaitReceive(5000) and awaitReady(RX_READY | TX_ROOM, 5000) end within a second, ready (after {@code lie},
     * run 200 ms into the first wait, if not null), and the receive after them throws the ring's reason.
     */
    private static void assertWaitEndsReady(Harness h, Runnable lie) throws Exception {
        AtomicReference<Object> result = new AtomicReference<>();
        long t0 = System.nanoTime();
        Thread t = Thread.ofPlatform().daemon().start(() -> {
            try {
                result.set(h.q.awaitReceive(5000));
            } catch (Throwable e) {
                result.set(e);
            }
        });
        if (lie != null) {
            Thread.sleep(200);
            lie.run();
        }
        t.join(10_000);
        assertThat(result.get()).as("awaitReceive(5000) on a broken ring").isEqualTo(true);
        assertThat(System.nanoTime() - t0).as("its wait").isLessThan(TimeUnit.SECONDS.toNanos(1));
        t0 = System.nanoTime();
        assertThat(h.q.awaitReady(NetQueuePair.RX_READY | NetQueuePair.TX_ROOM, 5000))
                .isEqualTo(NetQueuePair.RX_READY | NetQueuePair.TX_ROOM);
        assertThat(System.nanoTime() - t0).as("awaitReady's wait").isLessThan(TimeUnit.SECONDS.toNanos(1));
        assertThatThrownBy(() -> receive(h)).isInstanceOf(VirtqueueException.class).hasMessageContaining("broken");
        assertThat(h.rx.isBroken()).isTrue();
    }

    private static int receive(Harness h) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment[] bufs = {a.allocate(4096), a.allocate(4096)};
            return h.q.receive(bufs, new int[2], 2);
        }
    }
}
