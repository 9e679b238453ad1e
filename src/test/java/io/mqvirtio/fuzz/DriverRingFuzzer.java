package io.mqvirtio.fuzz;

import com.code_intelligence.jazzer.api.FuzzedDataProvider;
import io.mqvirtio.linux.MemFd;
import io.mqvirtio.linux.Mmap;
import io.mqvirtio.net.FuzzPairs;
import io.mqvirtio.net.NetQueuePair;
import io.mqvirtio.net.QueueCounters;
import io.mqvirtio.net.VirtioNet;
import io.mqvirtio.virtio.DriverRing;
import io.mqvirtio.virtio.ForwardingDriverRing;
import io.mqvirtio.virtio.PackedRing;
import io.mqvirtio.virtio.Rings;
import io.mqvirtio.virtio.SplitRing;
import io.mqvirtio.virtio.VirtioFeatures;
import io.mqvirtio.virtio.VirtqueueException;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.VarHandle;
import java.nio.ByteOrder;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * Fuzz target (d): our DRIVER's side of the rings ({@code SplitDriverRing}, {@code PackedDriverRing}) and the queue
 * pair above them ({@code NetQueuePair}: send, receive with and without MRG_RXBUF, awaitReceive) against what a
 * hostile backend can write: used entries (split: the used index and the elements' id and len; packed: the used
 * descriptors' flags, id and len and the wrap counters), the virtio-net header's num_buffers, and the event
 * suppression areas the device writes.
 *
 * <p>Guest memory is one memfd mapped twice (the driver's view, in which the pair runs, and the device's view, in
 * which the harness plays the backend), as in {@link RingFuzzer}. Each input is decoded into a ring configuration
 * (split or packed, a size, IN_ORDER and EVENT_IDX each on or off, MRG_RXBUF on or off, a buffer size) and a script
 * that interleaves the backend's writes with the driver's operations: send bursts, receives into buffers of any
 * size, awaitReceive(0). The backend reads what the driver offered from the rings, as a device does, and writes:
 * <ul>
 *   <li>structured RX frames: one or more offered buffers (any order, or ring order under IN_ORDER), filled with
 *       fresh bytes, the header's num_buffers right or a lie (0, 1, one short, one over, the ring's size, over it,
 *       0xffff, raw), each used length right or a lie (0, 11, 12, the buffer's size and one over, near 2^31 and
 *       2^32, raw), under IN_ORDER a batch as one entry (a split used index moved on by the batch, the buffers
 *       before its last used whole); published at once or held back and published later;</li>
 *   <li>TX completions (the frames read back and checked against what the application sent), batches under
 *       IN_ORDER;</li>
 *   <li>raw writes, after which the backend is "chaotic": used entries with ids out of range, in flight twice, not
 *       in flight, raw; a used index that jumps back, far ahead, over the 16-bit wrap; packed used descriptors with
 *       wrong wrap bits or raw flags anywhere; num_buffers rewritten under a frame; event suppression areas.</li>
 * </ul>
 *
 * <p>Oracle: while the backend names only buffers in flight, an independent model of the driver by the rules of
 * design.md and NetQueuePair's contract (a frame spans num_buffers used buffers, all but the last filled whole; a
 * length or count that breaks that drops the frame and counts an error; a frame longer than the caller's buffer is
 * cut and counted; a frame shorter than an Ethernet header is dropped) gives every receive exactly: how many frames,
 * their bytes (what the backend wrote, byte for byte), the packet, byte and error counters; every send's count
 * (what the TX ring has free once the completed frames are reaped); every awaitReceive(0); the ring never breaks.
 * Once the backend is chaotic: only VirtqueueException may come out (and then the ring stays broken: the next call
 * throws it again), a receive returns at most what was asked, every length within its buffer, its packet counter
 * moved by its count. Any other exception, any disagreement, or an input that runs past the fuzzer's timeout (a
 * hang, a spin) is a finding.
 */
public final class DriverRingFuzzer {
    static final ValueLayout.OfShort LE16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfInt LE32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfLong LE64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final VarHandle U16_VH = ValueLayout.JAVA_SHORT.withOrder(ByteOrder.LITTLE_ENDIAN).varHandle();

    static final long GPA_BASE = 0x4_0000_0000L; // guest addresses are not file offsets: a mix-up shows
    static final long RX_RING = 0, TX_RING = 64 << 10, RX_BUFS = 128 << 10, TX_BUFS = 640 << 10;
    static final long FILE_SIZE = 2 << 20;
    static final int[] SIZES = {1, 2, 3, 4, 5, 7, 8, 16, 31, 64, 255, 256};
    static final int[] BUF_SIZES = {26, 27, 40, 64, 100, 256, 1526};

    static MemFd memfd;
    static Mmap driverMap;
    static Mmap deviceMap;
    static MemorySegment drv;
    static MemorySegment dev;

    // per input
    static boolean packed, inOrder, eventIdx, mergeable;
    static int size, bufSize;
    static NetQueuePair q;
    static Dev rxDev, txDev;
    static boolean chaos;
    static boolean rxBroken, txBroken;
    static byte[][] content;                       // by RX slot: what the backend wrote into that buffer
    static final ArrayDeque<int[]> usedQ = new ArrayDeque<>();    // RX used and published: id, len, slot
    static final ArrayDeque<int[]> withheld = new ArrayDeque<>(); // RX used, written, not published yet
    static final ArrayDeque<byte[]> txSent = new ArrayDeque<>();  // frames sent and not yet seen offered
    static long txSentTotal, txCompleted;
    static int gen;
    /** awaitReceive said a frame waits, and the backend has not written into its rings since. */
    static boolean awaited;

    /** The backend's view of one ring: what it has read of the offers, where it writes used entries. */
    static final class Dev {
        final long base;          // the ring's offset in the memfd
        final Rings.Layout layout;
        final ArrayDeque<long[]> offered = new ArrayDeque<>(); // id, gpa, len, and (TX) the index into frames
        final ArrayDeque<byte[]> frames = new ArrayDeque<>();  // TX: the frame each offer carries, in offer order
        int availSeen;            // split: avail entries read
        int usedIdx;              // split: the used index written (shadow)
        int aPos, uPos;           // packed: next avail position read, next used position written
        boolean aWrap = true, uWrap = true;

        Dev(long base) {
            this.base = base;
            this.layout = Rings.layout(size, features());
        }

        /** Reads what the driver has made available since the last look. */
        void refresh(boolean tx) {
            if (packed) {
                while (true) {
                    long b = base + layout.descOffset() + (long) PackedRing.DESC_SIZE * aPos;
                    int flags = Short.toUnsignedInt((short) U16_VH.getAcquire(dev, b + PackedRing.DESC_FLAGS));
                    boolean avail = (flags & PackedRing.F_AVAIL) != 0, used = (flags & PackedRing.F_USED) != 0;
                    if (avail != aWrap || used == aWrap) {
                        break;
                    }
                    offer(tx, Short.toUnsignedInt(dev.get(LE16, b + PackedRing.DESC_ID)),
                            dev.get(LE64, b + PackedRing.DESC_ADDR), dev.get(LE32, b + PackedRing.DESC_LEN), flags);
                    if (++aPos == size) {
                        aPos = 0;
                        aWrap = !aWrap;
                    }
                }
                return;
            }
            long avail = base + layout.availOffset();
            int idx = Short.toUnsignedInt((short) U16_VH.getAcquire(dev, avail + SplitRing.AVAIL_IDX));
            while (availSeen != idx) {
                int head = Short.toUnsignedInt(dev.get(LE16, avail + SplitRing.AVAIL_RING + 2L * (availSeen % size)));
                check(head < size, "avail entry " + availSeen + " names descriptor " + head);
                long d = base + layout.descOffset() + (long) SplitRing.DESC_SIZE * head;
                offer(tx, head, dev.get(LE64, d + SplitRing.DESC_ADDR), dev.get(LE32, d + SplitRing.DESC_LEN),
                        Short.toUnsignedInt(dev.get(LE16, d + SplitRing.DESC_FLAGS)));
                availSeen = (availSeen + 1) & 0xffff;
            }
        }

        private void offer(boolean tx, int id, long gpa, int len, int flags) {
            long off = gpa - GPA_BASE - (tx ? TX_BUFS : RX_BUFS);
            boolean writable = (flags & SplitRing.DESC_F_WRITE) != 0; // the same bit in both layouts
            byte[] f = tx ? txSent.poll() : null;
            String bad = id >= size ? "offered buffer id " + id + " of a ring of " + size
                    : off < 0 || off % bufSize != 0 || off / bufSize >= size ? "offered buffer at 0x"
                            + Long.toHexString(gpa) + " is not one of the pair's buffers"
                    : writable == tx ? (tx ? "TX" : "RX") + " buffer offered with flags 0x" + Integer.toHexString(flags)
                    : tx && f == null ? "a TX buffer offered that no send put there"
                    : tx && len != VirtioNet.HDR_SIZE + f.length ? "TX buffer of " + len + " bytes for a frame of "
                            + f.length
                    : !tx && len != bufSize ? "RX buffer of " + len + " bytes, the pair's are " + bufSize : null;
            if (bad != null) {
                // what a chaotic backend wrote into the ring itself may read as offers: it is not the driver's
                check(chaos, bad);
                return;
            }
            if (tx) {
                frames.add(f);
            }
            offered.add(new long[] {id, gpa, len});
        }

        /** Takes the offer at {@code i} (0: the oldest). */
        long[] take(int i, byte[][] frame) {
            long[] o;
            byte[] f = null;
            if (i == 0) {
                o = offered.poll();
                f = frames.poll();
            } else {
                List<long[]> l = new ArrayList<>(offered);
                List<byte[]> fl = new ArrayList<>(frames);
                o = l.remove(i);
                if (!fl.isEmpty()) {
                    f = fl.remove(i);
                }
                offered.clear();
                offered.addAll(l);
                frames.clear();
                frames.addAll(fl);
            }
            if (frame != null) {
                frame[0] = f;
            }
            return o;
        }

        /** Writes a used entry for {@code id} covering {@code slots} positions; visible at once unless held. */
        void writeUsed(int id, int len, int slots, int chains, boolean visible) {
            if (packed) {
                long b = base + layout.descOffset() + (long) PackedRing.DESC_SIZE * uPos;
                dev.set(LE32, b + PackedRing.DESC_LEN, len);
                dev.set(LE16, b + PackedRing.DESC_ID, (short) id);
                pendingFlags.add(new int[] {uPos, uWrap ? PackedRing.F_AVAIL | PackedRing.F_USED : 0});
                uPos += slots;
                if (uPos >= size) {
                    uPos -= size;
                    uWrap = !uWrap;
                }
            } else {
                long e = base + layout.usedOffset() + SplitRing.USED_RING + 8L * (pendingUsed % size);
                dev.set(LE32, e, id);
                dev.set(LE32, e + 4, len);
                pendingUsed = (pendingUsed + chains) & 0xffff; // IN_ORDER (2.7.9): a batch moves it by its size
            }
            if (visible) {
                publish();
            }
        }

        final ArrayDeque<int[]> pendingFlags = new ArrayDeque<>();
        int pendingUsed;

        void publish() {
            if (packed) {
                int[] p;
                while ((p = pendingFlags.poll()) != null) {
                    U16_VH.setRelease(dev, base + layout.descOffset() + (long) PackedRing.DESC_SIZE * p[0]
                            + PackedRing.DESC_FLAGS, (short) p[1]);
                }
            } else {
                usedIdx = pendingUsed;
                U16_VH.setRelease(dev, base + layout.usedOffset() + SplitRing.USED_IDX, (short) usedIdx);
            }
        }
    }

    static long features() {
        return VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | (packed ? VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED) : 0)
                | (inOrder ? VirtioFeatures.bit(VirtioFeatures.F_IN_ORDER) : 0)
                | (eventIdx ? VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX) : 0);
    }

    public static void fuzzerInitialize() {
        FuzzSupport.quietLogging();
        memfd = MemFd.create("mqv-fuzz-driver", FILE_SIZE);
        driverMap = Mmap.shared(memfd, 0, FILE_SIZE);
        deviceMap = Mmap.shared(memfd, 0, FILE_SIZE);
        drv = driverMap.segment();
        dev = deviceMap.segment();
    }

    public static void fuzzerTearDown() {
        deviceMap.close();
        driverMap.close();
        memfd.close();
    }

    static void check(boolean ok, String what) {
        if (!ok) {
            throw new FuzzFinding(what + " [" + config() + "]");
        }
    }

    static String config() {
        return (packed ? "packed" : "split") + " size " + size + (inOrder ? " IN_ORDER" : "") + (eventIdx ? " EVENT_IDX" : "")
                + (mergeable ? " MRG_RXBUF" : "") + " buffers of " + bufSize + (chaos ? ", chaotic backend" : "");
    }

    public static void fuzzerTestOneInput(FuzzedDataProvider d) {
        boolean bare = d.consumeInt(0, 2) == 0;
        packed = d.consumeBoolean();
        size = packed ? SIZES[d.consumeInt(0, SIZES.length - 1)] : 1 << d.consumeInt(0, 8);
        inOrder = d.consumeBoolean();
        eventIdx = d.consumeBoolean();
        mergeable = d.consumeBoolean();
        bufSize = BUF_SIZES[d.consumeInt(0, BUF_SIZES.length - 1)];
        chaos = false;
        rxBroken = txBroken = false;
        awaited = false;
        usedQ.clear();
        withheld.clear();
        txSent.clear();
        txSentTotal = txCompleted = 0;
        content = new byte[size][bufSize];
        drv.asSlice(0, TX_BUFS + (long) size * bufSize).fill((byte) 0);

        if (bare) {
            BareRing.run(d);
            return;
        }
        Rings.Layout layout = Rings.layout(size, features());
        DriverRing rx = Rings.driver(size, features(), drv.asSlice(RX_RING, layout.totalBytes()));
        if (d.consumeInt(0, 3) == 0) {
            rx = new Hooked(rx, d);
        }
        DriverRing tx = Rings.driver(size, features(), drv.asSlice(TX_RING, layout.totalBytes()));
        rxDev = new Dev(RX_RING);
        txDev = new Dev(TX_RING);
        q = FuzzPairs.pair(rx, tx, drv.asSlice(RX_BUFS, (long) size * bufSize), GPA_BASE + RX_BUFS,
                drv.asSlice(TX_BUFS, (long) size * bufSize), GPA_BASE + TX_BUFS, bufSize, mergeable);
        try {
            rxDev.refresh(false);
            check(rxDev.offered.size() == size, "the pair offered " + rxDev.offered.size() + " RX buffers of " + size);
            for (int step = 0; step < 64 && d.remainingBytes() > 0; step++) {
                switch (d.consumeInt(0, 9)) {
                    case 0, 1, 2 -> rxFrame(d);
                    case 3 -> publishWithheld();
                    case 4 -> txComplete(d);
                    case 5 -> send(d);
                    case 6, 7 -> receive(d);
                    case 8 -> await();
                    default -> raw(d);
                }
            }
            receive(d); // what is left, as far as the last receive's room goes
        } finally {
            FuzzPairs.close(q);
        }
    }

    /** The backend uses one or more offered RX buffers for a frame (num_buffers and lengths right, or a lie). */
    static void rxFrame(FuzzedDataProvider d) {
        tookBack();
        rxDev.refresh(false);
        int avail = rxDev.offered.size();
        if (avail == 0) {
            return;
        }
        int k = mergeable ? d.consumeInt(1, Math.min(avail, 5)) : 1;
        boolean lie = d.consumeInt(0, 3) == 0;
        int[] ids = new int[k], lens = new int[k], slots = new int[k];
        for (int i = 0; i < k; i++) {
            long[] o = rxDev.take(inOrder ? 0 : d.consumeInt(0, rxDev.offered.size() - 1), null);
            ids[i] = (int) o[0];
            slots[i] = (int) ((o[1] - GPA_BASE - RX_BUFS) / bufSize);
            boolean last = i == k - 1;
            lens[i] = !last ? bufSize : k == 1 ? d.consumeInt(VirtioNet.HDR_SIZE, bufSize) : d.consumeInt(1, bufSize);
            if (lie && d.consumeBoolean()) {
                lens[i] = switch (d.consumeInt(0, 9)) {
                    case 0 -> 0;
                    case 1 -> VirtioNet.HDR_SIZE - 1;
                    case 2 -> VirtioNet.HDR_SIZE;
                    case 3 -> bufSize - 1;
                    case 4 -> bufSize + 1;
                    case 5 -> Integer.MAX_VALUE;
                    case 6 -> -1;
                    case 7 -> -VirtioNet.HDR_SIZE;
                    case 8 -> Integer.MIN_VALUE;
                    default -> d.consumeInt();
                };
            }
            byte[] c = content[slots[i]];
            int g = ++gen;
            for (int j = 0; j < bufSize; j++) {
                c[j] = (byte) (g * 31 + j * 7 + (j >> 8));
            }
            if (i == 0) {
                Arrays.fill(c, 0, VirtioNet.HDR_SIZE, (byte) 0);
                int nb = !lie || d.consumeBoolean() ? k : switch (d.consumeInt(0, 7)) {
                    case 0 -> 0;
                    case 1 -> 1;
                    case 2 -> k - 1;
                    case 3 -> k + 1;
                    case 4 -> size;
                    case 5 -> size + 1;
                    case 6 -> 0xffff;
                    default -> d.consumeInt(0, 0xffff);
                };
                c[VirtioNet.HDR_NUM_BUFFERS] = (byte) nb;
                c[VirtioNet.HDR_NUM_BUFFERS + 1] = (byte) (nb >> 8);
            }
            MemorySegment.copy(c, 0, dev, ValueLayout.JAVA_BYTE, o[1] - GPA_BASE, bufSize);
        }
        boolean hold = d.consumeInt(0, 4) == 0;
        // under IN_ORDER a run of buffers may be one used entry naming the last (the others used whole)
        int batch = inOrder && k > 1 && d.consumeInt(0, 3) == 0 ? k : 1;
        for (int i = 0; i < k; i += batch) {
            int last = i + batch - 1;
            rxDev.writeUsed(ids[last], lens[last], batch, batch, !hold && withheld.isEmpty());
            for (int j = i; j <= last; j++) {
                int[] e = {ids[j], j == last ? lens[j] : bufSize, slots[j]};
                if (hold || !withheld.isEmpty()) {
                    withheld.add(e);
                } else {
                    usedQ.add(e);
                }
            }
        }
    }

    static void publishWithheld() {
        tookBack();
        rxDev.publish();
        usedQ.addAll(withheld);
        withheld.clear();
    }

    /** The backend completes offered TX chains, checking each frame against what the application sent. */
    static void txComplete(FuzzedDataProvider d) {
        txDev.refresh(true);
        int avail = txDev.offered.size();
        if (avail == 0) {
            return;
        }
        int n = d.consumeInt(1, avail);
        boolean batch = inOrder && d.consumeBoolean();
        for (int i = 0; i < n; i++) {
            byte[][] f = new byte[1][];
            long[] o = txDev.take(inOrder ? 0 : d.consumeInt(0, txDev.offered.size() - 1), f);
            MemorySegment b = dev.asSlice(o[1] - GPA_BASE, o[2]);
            for (int j = 0; j < VirtioNet.HDR_SIZE; j++) {
                check(chaos || b.get(ValueLayout.JAVA_BYTE, j) == 0, "TX header byte " + j + " is not 0");
            }
            byte[] got = b.asSlice(VirtioNet.HDR_SIZE).toArray(ValueLayout.JAVA_BYTE);
            check(chaos || Arrays.equals(got, f[0]), "a TX frame the backend read is not the frame the application sent");
            if (!batch || i == n - 1) {
                int len = switch (d.consumeInt(0, 3)) {
                    case 0 -> 0;
                    case 1 -> (int) o[2];
                    default -> d.consumeInt();
                };
                txDev.writeUsed((int) o[0], len, batch ? n : 1, batch ? n : 1, true);
            }
        }
        txCompleted += n;
    }

    /**
     * A chaotic backend's writes into the RX ring, structured ones included, land where its own books (wrong by now)
     * say: over a used entry the driver has not reaped, which they may take back.
     */
    static void tookBack() {
        if (chaos) {
            awaited = false;
        }
    }

    static void send(FuzzedDataProvider d) {
        int k = d.consumeInt(1, 8);
        MemorySegment[] frames = new MemorySegment[k];
        byte[][] bytes = new byte[k][];
        for (int i = 0; i < k; i++) {
            int len = d.consumeInt(14, bufSize - VirtioNet.HDR_SIZE);
            bytes[i] = new byte[len];
            int g = ++gen;
            for (int j = 0; j < len; j++) {
                bytes[i][j] = (byte) (g * 13 + j);
            }
            frames[i] = MemorySegment.ofArray(bytes[i]);
        }
        long outstanding = txSentTotal - txCompleted;
        int sent;
        try {
            sent = q.send(frames, 0, k);
        } catch (VirtqueueException e) {
            check(chaos, "send threw while the backend named only buffers in flight: " + e);
            txBroken = true;
            return;
        }
        check(!txBroken, "send on a broken TX ring returned " + sent + " instead of throwing");
        check(sent >= 0 && sent <= k, "send of " + k + " returned " + sent);
        if (!chaos) {
            check(sent == Math.min(k, size - outstanding), "send of " + k + " took " + sent + " with " + outstanding
                    + " of " + size + " in flight");
        }
        for (int i = 0; i < sent; i++) {
            txSent.add(bytes[i]);
        }
        txSentTotal += sent;
    }

    static final int[] DST_SIZES = {1, 13, 14, 60, 1514, 9000};

    static void receive(FuzzedDataProvider d) {
        int max = d.consumeInt(0, 4);
        MemorySegment[] bufs = new MemorySegment[max];
        int[] lengths = new int[max];
        for (int i = 0; i < max; i++) {
            int s = d.consumeBoolean() ? bufSize * d.consumeInt(1, 6) : DST_SIZES[d.consumeInt(0, DST_SIZES.length - 1)];
            bufs[i] = MemorySegment.ofArray(new byte[s]);
        }
        List<byte[]> want = new ArrayList<>();
        long[] wantCounts = chaos ? null : model(bufs, max, want);
        QueueCounters.Snapshot before = q.rxCounters();
        int n;
        try {
            n = q.receive(bufs, lengths, max);
        } catch (VirtqueueException e) {
            check(chaos, "receive threw while the backend named only buffers in flight: " + e);
            rxBroken = true;
            return;
        }
        check(!rxBroken || n == 0 && max == 0, "receive on a broken RX ring returned " + n + " instead of throwing");
        QueueCounters.Snapshot after = q.rxCounters();
        // awaitReceive's promise: a used entry is there to receive, which receive delivers or drops as an error (a
        // caller looping on await and receive must not spin on an entry neither takes)
        check(!awaited || max == 0 || n > 0 || after.errors() > before.errors(), "awaitReceive(0) said a frame waits,"
                + " and receive took none and counted no error");
        if (max > 0) {
            awaited = false;
        }
        check(n >= 0 && n <= max, "receive of at most " + max + " returned " + n);
        check(after.packets() - before.packets() == n, "receive returned " + n + " frames, counted "
                + (after.packets() - before.packets()));
        for (int i = 0; i < n; i++) {
            check(lengths[i] >= 0 && lengths[i] <= bufs[i].byteSize(), "frame " + i + " of " + lengths[i]
                    + " bytes in a buffer of " + bufs[i].byteSize());
        }
        if (wantCounts == null || chaos) { // chaotic from the start, or since a write in the middle of this receive
            return;
        }
        check(n == want.size(), "receive returned " + n + " frames, the model " + want.size() + " (last error: "
                + q.lastRxError() + ")");
        for (int i = 0; i < n; i++) {
            byte[] got = bufs[i].asSlice(0, lengths[i]).toArray(ValueLayout.JAVA_BYTE);
            check(Arrays.equals(got, want.get(i)), "frame " + i + ": " + lengths[i] + " bytes, the model's "
                    + want.get(i).length + (lengths[i] == want.get(i).length ? ", other bytes" : ""));
        }
        check(after.errors() - before.errors() == wantCounts[0], "receive counted " + (after.errors() - before.errors())
                + " errors, the model " + wantCounts[0] + " (last error: " + q.lastRxError() + ")");
        check(after.bytes() - before.bytes() == wantCounts[1], "receive counted " + (after.bytes() - before.bytes())
                + " bytes, the model " + wantCounts[1]);
    }

    /**
     * What a receive of up to {@code max} frames into {@code bufs} must give, from the used buffers published
     * ({@link #usedQ}, taken as the driver takes them): the frames (into {@code want}), and {errors, bytes}.
     */
    static long[] model(MemorySegment[] bufs, int max, List<byte[]> want) {
        long errors = 0, bytes = 0;
        while (want.size() < max && !usedQ.isEmpty()) {
            int[] h = usedQ.poll();
            int used = h[1];
            byte[] c = content[h[2]];
            if (Integer.compareUnsigned(used, VirtioNet.HDR_SIZE) < 0) {
                errors++;
                continue;
            }
            int nb = mergeable ? (c[VirtioNet.HDR_NUM_BUFFERS] & 0xff) | (c[VirtioNet.HDR_NUM_BUFFERS + 1] & 0xff) << 8 : 1;
            if (nb < 1 || nb > size) {
                errors++;
                continue;
            }
            int more = nb - 1;
            int there = usedQ.size();
            boolean bad = more > there || Integer.compareUnsigned(used, bufSize) > 0 || more > 0 && used != bufSize;
            var frame = new java.io.ByteArrayOutputStream();
            if (!bad) {
                frame.write(c, VirtioNet.HDR_SIZE, used - VirtioNet.HDR_SIZE);
            }
            for (int k = 1; k <= Math.min(more, there); k++) {
                int[] e = usedQ.poll();
                int l = e[1];
                if (!bad && (l == 0 || Integer.compareUnsigned(l, bufSize) > 0 || k < more && l != bufSize)) {
                    bad = true;
                }
                if (!bad) {
                    frame.write(content[e[2]], 0, l);
                }
            }
            if (bad || frame.size() < 14) {
                errors++;
                continue;
            }
            byte[] f = frame.toByteArray();
            int kept = (int) Math.min(f.length, bufs[want.size()].byteSize());
            if (kept < f.length) {
                errors++;
            }
            bytes += f.length;
            want.add(Arrays.copyOf(f, kept));
        }
        return new long[] {errors, bytes};
    }

    static void await() {
        boolean want = !usedQ.isEmpty();
        boolean got;
        try {
            got = q.awaitReceive(0);
        } catch (VirtqueueException e) {
            check(chaos, "awaitReceive threw while the backend named only buffers in flight: " + e);
            rxBroken = true;
            return;
        }
        awaited = got;
        check(chaos || got == want, "awaitReceive(0) said " + got + " with " + usedQ.size() + " used buffers published");
    }

    /** A write of a hostile backend that the model does not follow: from here on only the safety oracle holds. */
    static void raw(FuzzedDataProvider d) {
        awaited = false; // the backend may take back what awaitReceive saw
        boolean onTx = d.consumeBoolean();
        Dev r = onTx ? txDev : rxDev;
        int kind = d.consumeInt(0, 5);
        if (kind == 5 || (kind == 4 && !mergeable)) { // event suppression: only kicks depend on it, the model holds
            long at = r.base + (packed ? r.layout.usedOffset() : d.consumeBoolean() ? r.layout.usedOffset()
                    + SplitRing.USED_FLAGS : r.layout.usedOffset() + SplitRing.USED_RING + 8L * size);
            dev.set(LE16, at, (short) d.consumeInt(0, 0xffff));
            if (packed) {
                dev.set(LE16, at + 2, (short) d.consumeInt(0, 0xffff));
            }
            return;
        }
        chaos = true;
        if (kind == 4) { // num_buffers rewritten in any RX buffer, one under a frame perhaps
            long at = RX_BUFS + (long) d.consumeInt(0, size - 1) * bufSize + VirtioNet.HDR_NUM_BUFFERS;
            dev.set(LE16, at, (short) d.consumeInt(0, 0xffff));
            return;
        }
        int id = switch (d.consumeInt(0, 5)) {
            case 0 -> size;
            case 1 -> d.consumeInt(0, size - 1);                       // in flight, used twice, or not in flight
            case 2 -> usedQ.isEmpty() ? 0 : usedQ.peekLast()[0];       // in flight twice
            case 3 -> 0xffff;
            case 4 -> -1;
            default -> d.consumeInt();
        };
        int len = d.consumeBoolean() ? bufSize : d.consumeInt();
        if (packed) {
            int pos = kind == 0 ? r.uPos : d.consumeInt(0, size - 1);
            long b = r.base + r.layout.descOffset() + (long) PackedRing.DESC_SIZE * pos;
            dev.set(LE32, b + PackedRing.DESC_LEN, len);
            dev.set(LE16, b + PackedRing.DESC_ID, (short) id);
            int w = r.uWrap ? PackedRing.F_AVAIL | PackedRing.F_USED : 0;
            int flags = switch (kind) {
                case 0, 1 -> w;
                case 2 -> w ^ (PackedRing.F_AVAIL | PackedRing.F_USED); // the wrong lap
                default -> d.consumeInt(0, 0xffff);
            };
            U16_VH.setRelease(dev, b + PackedRing.DESC_FLAGS, (short) flags);
            if (kind == 0 && ++r.uPos == size) {
                r.uPos = 0;
                r.uWrap = !r.uWrap;
            }
            return;
        }
        long usedOff = r.base + r.layout.usedOffset();
        if (kind <= 1) { // an entry, published
            long e = usedOff + SplitRing.USED_RING + 8L * (r.pendingUsed % size);
            dev.set(LE32, e, id);
            dev.set(LE32, e + 4, len);
            r.pendingUsed = (r.pendingUsed + 1) & 0xffff;
            r.publish();
            return;
        }
        int delta = switch (d.consumeInt(0, 6)) { // the used index jumps
            case 0 -> -1;
            case 1 -> 1;
            case 2 -> size;
            case 3 -> size + 1;
            case 4 -> 0x8000;
            case 5 -> 0xffff;
            default -> d.consumeInt();
        };
        r.pendingUsed = (r.usedIdx + delta) & 0xffff;
        r.publish();
    }

    /**
     * The ring alone, through the whole {@link DriverRing} interface, which the queue pair uses only in part: chains
     * of 1..4 direct descriptors, indirect chains (INDIRECT_DESC on, an indirect area given), bursts, publishes,
     * reaps, usedPending, the interrupt calls. The model knows every chain in flight (its id, its descriptors,
     * whether published); an honest backend (completions of chains it read from the ring, in ring order and in
     * batches under IN_ORDER) gives exactly the ids and lengths the model expects, every count agrees; a chaotic
     * one may break the ring (VirtqueueException, for good) but never makes a reap return an id that is not a
     * published chain in flight (a buffer handed out twice, or never offered), and the free descriptors always
     * equal the ring's size less those of the chains in flight.
     */
    static final class BareRing {
        static final int INDIRECT_MAX = 4;
        static DriverRing r;
        static int[] slotsOf;                 // by id: descriptors in the ring the chain took, 0 = not in flight
        static int[] writableOf;              // by id: bytes its writable buffers offer (unsigned, at most 2^32-1)
        static boolean[] published;
        static final ArrayDeque<Integer> order = new ArrayDeque<>();     // ids in the order they were added
        static final ArrayDeque<int[]> used = new ArrayDeque<>();        // honest used, published: id, len
        static int freeDescs;
        static boolean broken;

        static void run(FuzzedDataProvider d) {
            boolean indirect = d.consumeBoolean();
            long f = features() | (indirect ? VirtioFeatures.bit(VirtioFeatures.F_INDIRECT_DESC) : 0);
            Rings.Layout layout = Rings.layout(size, f);
            r = indirect ? Rings.driver(size, f, drv.asSlice(RX_RING, layout.totalBytes()),
                    drv.asSlice(TX_BUFS, (long) size * INDIRECT_MAX * 16), GPA_BASE + TX_BUFS, INDIRECT_MAX)
                    : Rings.driver(size, f, drv.asSlice(RX_RING, layout.totalBytes()));
            rxDev = new Dev(RX_RING);
            txDev = rxDev; // raw writes go to the one ring
            slotsOf = new int[size];
            writableOf = new int[size];
            published = new boolean[size];
            order.clear();
            used.clear();
            freeDescs = size;
            broken = false;
            for (int step = 0; step < 96 && d.remainingBytes() > 0; step++) {
                try {
                    op(d, indirect);
                } catch (VirtqueueException e) {
                    check(chaos || broken, "the ring broke while the backend named only chains in flight: " + e);
                    check(r.isBroken(), "VirtqueueException from a ring that does not say it is broken: " + e);
                    broken = true;
                }
                check(broken || r.freeDescriptors() == freeDescs, "the ring has " + r.freeDescriptors()
                        + " free descriptors, the model " + freeDescs);
                check(broken || r.inFlight() == order.size(), "the ring has " + r.inFlight() + " chains in flight, "
                        + "the model " + order.size());
            }
        }

        static void op(FuzzedDataProvider d, boolean indirect) {
            switch (d.consumeInt(0, 9)) {
                case 0, 1 -> {
                    int n = d.consumeInt(1, indirect && d.consumeBoolean() ? INDIRECT_MAX : 4);
                    int out = d.consumeInt(0, n);
                    long[] addr = new long[n];
                    int[] len = new int[n];
                    for (int i = 0; i < n; i++) {
                        addr[i] = d.consumeLong();
                        len[i] = d.consumeInt();
                    }
                    boolean ind = indirect && d.consumeBoolean();
                    int id = ind ? r.addIndirect(addr, len, out, n - out) : r.add(addr, len, out, n - out);
                    check(!broken, "add on a broken ring returned " + id);
                    int slots = ind ? 1 : n;
                    if (id < 0) {
                        check(freeDescs < slots, "add of " + slots + " descriptors refused with " + freeDescs + " free");
                        return;
                    }
                    long offered = 0;
                    for (int i = out; i < n; i++) {
                        offered += Integer.toUnsignedLong(len[i]);
                    }
                    added(id, slots, (int) Math.min(offered, 0xffff_ffffL));
                }
                case 2 -> {
                    int n = d.consumeInt(0, 8);
                    long[] addr = new long[n];
                    int[] len = new int[n];
                    int[] ids = new int[n];
                    for (int i = 0; i < n; i++) {
                        addr[i] = d.consumeLong();
                        len[i] = d.consumeInt();
                    }
                    boolean writable = d.consumeBoolean();
                    int k = r.addBurst(addr, len, n, writable, ids);
                    check(!broken, "addBurst on a broken ring returned " + k);
                    check(k == Math.min(n, freeDescs), "addBurst of " + n + " added " + k + " with " + freeDescs + " free");
                    for (int i = 0; i < k; i++) {
                        added(ids[i], 1, writable ? len[i] : 0);
                    }
                }
                case 3 -> {
                    r.publish();
                    for (int id : order) {
                        published[id] = true;
                    }
                }
                case 4, 5 -> complete(d);
                case 6, 7 -> {
                    for (int k = d.consumeInt(1, 4); k > 0; k--) {
                        if (!reap()) {
                            break;
                        }
                    }
                }
                case 8 -> {
                    switch (d.consumeInt(0, 3)) {
                        case 0 -> {
                            int n = r.usedPending();
                            check(chaos || broken || n == used.size(), "usedPending " + n + ", the model " + used.size());
                        }
                        case 1 -> r.disableInterrupts();
                        case 2 -> {
                            boolean more = r.enableInterrupts();
                            check(chaos || broken || more == !used.isEmpty(), "enableInterrupts said " + more + " with "
                                    + used.size() + " used");
                        }
                        default -> r.needsKick();
                    }
                }
                default -> raw(d);
            }
        }

        static void added(int id, int slots, int writable) {
            check(id >= 0 && id < size && slotsOf[id] == 0, "add returned id " + id + ", in flight already or out of "
                    + "range");
            slotsOf[id] = slots;
            writableOf[id] = writable;
            published[id] = false;
            order.add(id);
            freeDescs -= slots;
        }

        /** The honest backend reads what was published and uses some of it. */
        static void complete(FuzzedDataProvider d) {
            Dev v = rxDev;
            // what was made available: the chains' ids and descriptor counts, read as a device reads them
            if (packed) {
                while (true) {
                    long b = v.base + v.layout.descOffset() + (long) PackedRing.DESC_SIZE * v.aPos;
                    int flags = Short.toUnsignedInt((short) U16_VH.getAcquire(dev, b + PackedRing.DESC_FLAGS));
                    if (((flags & PackedRing.F_AVAIL) != 0) != v.aWrap || ((flags & PackedRing.F_USED) != 0) == v.aWrap) {
                        break;
                    }
                    int slots = 1;
                    while ((flags & PackedRing.F_NEXT) != 0 && slots < size) {
                        if (++v.aPos == size) {
                            v.aPos = 0;
                            v.aWrap = !v.aWrap;
                        }
                        b = v.base + v.layout.descOffset() + (long) PackedRing.DESC_SIZE * v.aPos;
                        flags = Short.toUnsignedInt(dev.get(LE16, b + PackedRing.DESC_FLAGS));
                        slots++;
                    }
                    int id = Short.toUnsignedInt(dev.get(LE16, b + PackedRing.DESC_ID));
                    if (++v.aPos == size) {
                        v.aPos = 0;
                        v.aWrap = !v.aWrap;
                    }
                    if (!chaos) {
                        check(id < size && slotsOf[id] == slots && published[id], "chain id " + id + " of " + slots
                                + " descriptors made available");
                    }
                    v.offered.add(new long[] {id, slots});
                }
            } else {
                long avail = v.base + v.layout.availOffset();
                int idx = Short.toUnsignedInt((short) U16_VH.getAcquire(dev, avail + SplitRing.AVAIL_IDX));
                while (v.availSeen != idx) {
                    int head = Short.toUnsignedInt(dev.get(LE16, avail + SplitRing.AVAIL_RING + 2L * (v.availSeen % size)));
                    v.availSeen = (v.availSeen + 1) & 0xffff;
                    if (!chaos) {
                        check(head < size && published[head], "avail entry names " + head);
                    }
                    v.offered.add(new long[] {head, 1});
                }
            }
            if (v.offered.isEmpty()) {
                return;
            }
            int n = d.consumeInt(1, v.offered.size());
            boolean batch = inOrder && d.consumeBoolean();
            int slots = 0;
            for (int i = 0; i < n; i++) {
                long[] o = v.take(inOrder ? 0 : d.consumeInt(0, v.offered.size() - 1), null);
                int len = d.consumeBoolean() ? 0 : d.consumeInt();
                slots += (int) o[1];
                if (!batch || i == n - 1) {
                    v.writeUsed((int) o[0], len, batch ? slots : (int) o[1], batch ? n : 1, true);
                    slots = 0;
                }
                // a batch's chains before its last were used whole: the bytes they offered
                int id = (int) o[0];
                used.add(new int[] {id, !batch || i == n - 1 ? len : id < size ? writableOf[id] : 0});
            }
        }

        /** One reap; false when there was nothing. */
        static boolean reap() {
            int[] want = used.peek();
            int id = r.reap();
            check(!broken, "reap on a broken ring returned " + id);
            if (id < 0) {
                check(chaos || want == null, "reap found nothing, the model " + (want == null ? "" : want[0]));
                return false;
            }
            check(id < size && slotsOf[id] != 0 && published[id], "reap returned id " + id + ", which is not a "
                    + "published chain in flight (handed out twice, or never offered)");
            if (!chaos) {
                check(want != null && want[0] == id && want[1] == r.reapedLength(), "reap returned id " + id + " len "
                        + r.reapedLength() + ", the model " + (want == null ? "nothing" : want[0] + " len " + want[1]));
                used.poll();
            }
            freeDescs += slotsOf[id];
            slotsOf[id] = 0;
            order.remove(id);
            return true;
        }
    }

    /**
     * The pair's RX ring with a backend that acts in the middle of a receive, as one in another process can: before a
     * reap and after a usedPending (within takeFrame: between counting a frame's buffers and taking them) it may make
     * a raw write (one in eight), from the same input. Every call goes on to the real ring.
     */
    static final class Hooked extends ForwardingDriverRing {
        final FuzzedDataProvider d;

        Hooked(DriverRing ring, FuzzedDataProvider d) {
            super(ring);
            this.d = d;
        }

        private void maybe() {
            if (d.remainingBytes() > 0 && d.consumeInt(0, 7) == 0) {
                raw(d);
            }
        }

        @Override
        public int usedPending(int enough) {
            int n = ring.usedPending(enough);
            maybe();
            return n;
        }

        @Override
        public int reap() {
            maybe();
            return ring.reap();
        }
    }
}
