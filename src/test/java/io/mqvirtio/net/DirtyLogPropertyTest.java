package io.mqvirtio.net;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.linux.MemFd;
import io.mqvirtio.linux.Mmap;
import io.mqvirtio.vhostuser.Protocol;
import io.mqvirtio.vhostuser.VhostUserServer;
import io.mqvirtio.virtio.PackedRing;
import io.mqvirtio.virtio.SplitRing;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.VarHandle;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.LockSupport;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * Dirty logging under random traffic, against the one model that matters for a migration: the guest's memory
 * itself. A frontend logs (SET_LOG_BASE, LOG_ALL, VHOST_VRING_F_LOG on both rings, as QEMU does) while a driver
 * posts random RX chains (one to three descriptors anywhere across pages, indirect tables) and TX frames (one or two
 * descriptors), and the port hands the worker random frames, some larger than the chains they meet; split and packed
 * rings, MRG_RXBUF and EVENT_IDX on or off. Now and then the log is replaced under traffic, and the rings are stopped
 * (GET_VRING_BASE, frames in flight or parked) and resumed at the base they gave.
 *
 * <p>What holds, checked after every step: every page of guest memory whose bytes changed since the step began has
 * its bit in the log (in either log, when it was replaced). The frontend's side is QEMU's: it takes a bit with an
 * atomic exchange, then copies the page. The step's end reads memory first, then has the worker answer a command (a
 * burst in progress ends before it, and its marks with it: nothing the device flushes only later, at a stop or a new
 * log, can pass), then reads the bits. Besides: each used entry is the oldest chain in flight (nothing used twice,
 * none skipped, across stops too), RX frames arrive in order, and the port sends every TX frame once, in order.
 * Reproducible from the seed a failure names ({@code -Ddirty.seed=...}); longer soaks with {@code -Ddirty.millis}.
 */
@Timeout(60)
class DirtyLogPropertyTest {
    private static final long MEM = 8L << 20;
    private static final long PAGE = 4096;
    /** Room for one buffer of a chain: buffers lie anywhere in it, across page boundaries. */
    private static final int PART = 5000;
    /** Where a chain's indirect table lies in its slab (16-byte aligned: slabs are 64-byte aligned). */
    private static final long TABLE = 3L * PART + 8;
    private static final long BUDGET_NANOS = TimeUnit.MILLISECONDS.toNanos(Long.getLong("dirty.millis", 700));
    private static final VarHandle WORD = ValueLayout.JAVA_LONG.varHandle();
    private static final ValueLayout.OfInt LE32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    @TempDir
    Path dir;

    /** The driver's side of one ring: chains in flight, oldest first, and what each holds. */
    final class Side {
        final EvilDriver.Ring ring;
        final boolean isRx;
        final ArrayDeque<Integer> freeDesc = new ArrayDeque<>(); // split
        final ArrayDeque<Integer> freeIds = new ArrayDeque<>();  // packed
        int freeSlots;
        final ArrayDeque<Integer> inFlight = new ArrayDeque<>();
        final int[][] descsOf;
        final int[] slotsOf;
        final long[] firstBuf; // RX: the offset of a chain's first buffer (the frame's header and sequence number)
        final long[] slab;

        Side(EvilDriver.Ring ring, boolean isRx, Session s) {
            this.ring = ring;
            this.isRx = isRx;
            this.descsOf = new int[s.size][];
            this.slotsOf = new int[s.size];
            this.firstBuf = new long[s.size];
            this.slab = new long[s.size];
            for (int i = 0; i < s.size; i++) {
                freeDesc.add(i);
                freeIds.add(i);
                slab[i] = s.d.alloc(3L * PART + 512); // and an indirect table, then a fourth buffer
            }
            freeSlots = s.size;
        }
    }

    final class Session implements AutoCloseable {
        final long seed;
        final Random r;
        final boolean packed, mrg, indirect;
        final int size;
        final SequencePort port = new SequencePort();
        final NetDevice dev;
        final VhostUserServer server;
        final EvilDriver d;
        final Side rx, tx;
        final String where;
        final long logBytes;
        final MemFd[] logFds = new MemFd[2];
        final Mmap[] logs = new Mmap[2];
        int log;
        int rxNext, txNext;
        int lastRxSeq = -1;
        int frameLeft;      // RX: used entries still to come of the frame being read (num_buffers)
        int checks;

        Session(long seed, boolean packed, boolean mrg) {
            this.seed = seed;
            this.r = new Random(seed);
            this.packed = packed;
            this.mrg = mrg;
            int[] sizes = packed ? new int[] {8, 16, 50, 64} : new int[] {8, 16, 64};
            this.size = sizes[r.nextInt(sizes.length)];
            this.indirect = r.nextBoolean();
            long features = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1)
                    | (indirect ? VirtioFeatures.bit(VirtioFeatures.F_INDIRECT_DESC) : 0)
                    | (packed ? VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED) : 0)
                    | (mrg ? VirtioFeatures.bit(VirtioNet.F_MRG_RXBUF) : 0)
                    | (r.nextBoolean() ? VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX) : 0);
            this.where = "seed " + seed + " (packed=" + packed + " mrg=" + mrg + " size=" + size + " features=0x"
                    + Long.toHexString(features) + ")";
            dev = new NetDevice(NetDevice.Config.of("dirty", 1), port);
            server = VhostUserServer.listen(dir.resolve("d" + seed + ".sock"), dev);
            d = new EvilDriver(server.path(), 1, size, features, MEM, 1L << Protocol.PF_LOG_SHMFD, x -> {});
            byte[] noise = new byte[(int) (MEM - d.dataOff)];
            r.nextBytes(noise);
            MemorySegment.copy(MemorySegment.ofArray(noise), 0, d.mem, d.dataOff, noise.length);
            rx = new Side(d.rx(0), true, this);
            tx = new Side(d.tx(0), false, this);
            // guest-physical addresses are the driver's own (from about 2^47): sparse logs from 0 up to its memory
            logBytes = ((d.base + MEM) / PAGE / 64 + 1) * 8;
            for (int i = 0; i < 2; i++) {
                logFds[i] = MemFd.create("dirty-prop-" + i, logBytes);
                logs[i] = Mmap.shared(logFds[i], 0, logBytes);
            }
            d.fe.setLogBase(logFds[0], logBytes, 0);
            d.fe.setFeatures(d.negotiated | (1L << Protocol.F_PROTOCOL_FEATURES) | (1L << Protocol.F_LOG_ALL));
            for (EvilDriver.Ring g : d.rings) {
                logUsed(g);
            }
        }

        void logUsed(EvilDriver.Ring g) {
            d.fe.setVringAddr(g.index, Protocol.VRING_F_LOG, d.gpa(g.descOff), d.gpa(g.usedOff), d.gpa(g.availOff),
                    d.gpa(g.usedOff));
        }

        // ---- the driver ----

        /** Posts an RX chain of one to three buffers (or an indirect table of one to four); false without room. */
        boolean postRx() {
            int n = 1 + r.nextInt(3);
            boolean ind = indirect && r.nextInt(4) == 0;
            if (ind) {
                n = 1 + r.nextInt(4);
            }
            int slots = ind ? 1 : n;
            if ((packed ? Math.min(rx.freeSlots, rx.freeIds.size()) : rx.freeDesc.size()) < slots) {
                return false;
            }
            int id = packed ? rx.freeIds.poll() : rx.freeDesc.peek();
            long[] off = new long[n];
            int[] len = new int[n];
            for (int k = 0; k < n; k++) {
                int part = ind ? k % 3 : k;
                len[k] = 16 + r.nextInt(r.nextBoolean() ? 240 : (ind && k == 3 ? 200 : PART - 16 - 64));
                off[k] = rx.slab[id] + (long) part * PART + r.nextInt(PART - 64 - len[k] + 1);
                if (ind && k == 3) {
                    off[k] = rx.slab[id] + TABLE + 64; // the fourth after the table
                }
            }
            rx.firstBuf[id] = off[0];
            post(rx, id, off, len, SplitRing.DESC_F_WRITE, ind);
            return true;
        }

        /** Posts a TX frame (its sequence number after the header) in one or two buffers; false without room. */
        boolean postTx() {
            int n = 1 + r.nextInt(2);
            if ((packed ? Math.min(tx.freeSlots, tx.freeIds.size()) : tx.freeDesc.size()) < n) {
                return false;
            }
            int id = packed ? tx.freeIds.poll() : tx.freeDesc.peek();
            int total = 16 + r.nextInt(1500);
            byte[] frame = new byte[total];
            r.nextBytes(frame);
            java.util.Arrays.fill(frame, 0, VirtioNet.HDR_SIZE, (byte) 0);
            MemorySegment.ofArray(frame).set(LE32, VirtioNet.HDR_SIZE, txNext++);
            int cut = n == 1 ? total : 1 + r.nextInt(total - 1);
            int[] len = n == 1 ? new int[] {total} : new int[] {cut, total - cut};
            long[] off = new long[n];
            for (int k = 0; k < n; k++) {
                off[k] = tx.slab[id] + (long) k * PART + r.nextInt(PART - len[k] + 1);
            }
            MemorySegment.copy(MemorySegment.ofArray(frame), 0, d.mem, off[0], len[0]);
            if (n == 2) {
                MemorySegment.copy(MemorySegment.ofArray(frame), cut, d.mem, off[1], len[1]);
            }
            post(tx, id, off, len, 0, false);
            return true;
        }

        private void post(Side s, int id, long[] off, int[] len, int bufFlags, boolean ind) {
            int n = off.length;
            if (ind) {
                long table = s.slab[id] + TABLE;
                for (int k = 0; k < n; k++) {
                    long e = table + 16L * k;
                    d.mem.set(EvilDriver.U64, e, d.gpa(off[k]));
                    d.mem.set(EvilDriver.U32, e + 8, len[k]);
                    int f = bufFlags | (!packed && k + 1 < n ? SplitRing.DESC_F_NEXT : 0);
                    d.mem.set(EvilDriver.U16, e + 12, (short) (packed ? 0 : f));
                    d.mem.set(EvilDriver.U16, e + 14, (short) (packed ? f : k + 1));
                }
                off = new long[] {table};
                len = new int[] {16 * n};
                bufFlags = SplitRing.DESC_F_INDIRECT;
                n = 1;
            }
            if (packed) {
                int head = 0;
                for (int k = 0; k < n; k++) {
                    int f = bufFlags | (k + 1 < n ? PackedRing.F_NEXT : 0);
                    s.ring.packedAt(k, d.gpa(off[k]), len[k], id, f);
                    if (k == 0) {
                        head = f;
                    }
                }
                s.slotsOf[id] = n;
                s.freeSlots -= n;
                s.ring.publishPacked(head, n);
            } else {
                int[] descs = new int[n];
                for (int k = 0; k < n; k++) {
                    descs[k] = s.freeDesc.poll();
                }
                for (int k = 0; k < n; k++) {
                    boolean last = k + 1 == n;
                    s.ring.desc(descs[k], d.gpa(off[k]), len[k], bufFlags | (last ? 0 : SplitRing.DESC_F_NEXT),
                            last ? 0 : descs[k + 1]);
                }
                s.descsOf[id] = descs;
                s.ring.offer(id);
            }
            s.inFlight.add(id);
        }

        /** Takes the used entries the device published: each must be the oldest chain in flight. */
        void reap(Side s) {
            while (true) {
                int[] u = packed ? s.ring.packedUsedAtCursor() : s.ring.nextUsed();
                if (u == null) {
                    return;
                }
                Integer oldest = s.inFlight.poll();
                assertThat(oldest).as("%s used entry for id %d: chains in flight %s; %s", s.isRx ? "RX" : "TX", u[0],
                        s.inFlight, where).isNotNull();
                assertThat(u[0]).as("%s used id, the oldest in flight; %s", s.isRx ? "RX" : "TX", where).isEqualTo(oldest);
                int id = u[0];
                if (s.isRx) {
                    readRx(id, u[1]);
                }
                if (packed) {
                    s.ring.skipPackedUsed(s.slotsOf[id]);
                    s.freeSlots += s.slotsOf[id];
                    s.freeIds.add(id);
                } else {
                    for (int x : s.descsOf[id]) {
                        s.freeDesc.add(x);
                    }
                }
            }
        }

        private void readRx(int id, int len) {
            if (frameLeft > 0) {
                frameLeft--;
                return;
            }
            assertThat(len).as("an RX frame's used length; " + where).isGreaterThanOrEqualTo(16);
            long at = rx.firstBuf[id];
            int buffers = Short.toUnsignedInt(d.mem.get(EvilDriver.U16, at + 10));
            int seq = d.mem.get(LE32, at + VirtioNet.HDR_SIZE);
            assertThat(buffers).as("num_buffers; " + where).isBetween(1, mrg ? 64 : 1);
            assertThat(seq).as("RX frames in order, each once; " + where).isGreaterThan(lastRxSeq).isLessThan(rxNext);
            lastRxSeq = seq;
            frameLeft = buffers - 1;
        }

        byte[] randomFrame() {
            int len = switch (r.nextInt(6)) {
                case 0 -> 16 + r.nextInt(64);
                case 1 -> 1400 + r.nextInt(131); // up to the largest the device takes (1530 with the header)
                default -> 16 + r.nextInt(1515);
            };
            byte[] f = new byte[len];
            r.nextBytes(f);
            java.util.Arrays.fill(f, 0, VirtioNet.HDR_SIZE, (byte) 0);
            MemorySegment.ofArray(f).set(LE32, VirtioNet.HDR_SIZE, rxNext++);
            return f;
        }

        // ---- the frontend: the log as QEMU reads it ----

        /** Takes every bit covering the driver's memory from both logs (an atomic exchange per word, as QEMU does). */
        void clearBits() {
            long first = d.base / PAGE / 64;
            long last = (d.base + MEM - 1) / PAGE / 64;
            for (Mmap l : logs) {
                for (long w = first; w <= last; w++) {
                    WORD.getAndSet(l.segment(), w * 8, 0L);
                }
            }
        }

        boolean marked(long off) {
            long page = (d.base + off) / PAGE;
            for (Mmap l : logs) {
                long w = (long) WORD.getVolatile(l.segment(), (page / 64) * 8);
                if ((w & (1L << (page % 64))) != 0) {
                    return true;
                }
            }
            return false;
        }

        /** Every page that differs from {@code before} is marked; {@code stopped}: the rings are (no barrier needed). */
        void check(byte[] before, boolean stopped) {
            byte[] after = d.mem.toArray(ValueLayout.JAVA_BYTE);
            if (!stopped) {
                dev.enableRing(1, true); // a command: the burst in progress, if any, has ended (TX is enabled already)
            }
            MemorySegment a = MemorySegment.ofArray(before), b = MemorySegment.ofArray(after);
            for (long p = 0; p < MEM; p += PAGE) {
                if (MemorySegment.mismatch(a, p, p + PAGE, b, p, p + PAGE) >= 0 && !marked(p)) {
                    throw new AssertionError("page at offset 0x" + Long.toHexString(p) + " (" + what(p)
                            + ") was written and not marked, check " + checks + "; " + where);
                }
            }
            checks++;
        }

        String what(long off) {
            return off < d.dataOff ? "the rings" : "the buffers";
        }

        void run() {
            long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(150);
            while (System.nanoTime() < deadline || checks < 20) {
                reap(rx);
                reap(tx);
                int posts = r.nextInt(mrg ? 12 : 6);
                for (int i = 0; i < posts && postRx(); i++) {
                    // posted
                }
                posts = r.nextInt(6);
                for (int i = 0; i < posts && postTx(); i++) {
                    // posted
                }
                clearBits();
                byte[] before = d.mem.toArray(ValueLayout.JAVA_BYTE);
                int frames = r.nextInt(5);
                for (int i = 0; i < frames; i++) {
                    port.frames.add(randomFrame());
                }
                rx.ring.kick();
                tx.ring.kick();
                if (r.nextInt(8) == 0) {
                    log ^= 1; // a new log under traffic, as QEMU grows its log
                    d.fe.setLogBase(logFds[log], logBytes, 0);
                }
                LockSupport.parkNanos(r.nextInt(300_000));
                boolean stop = r.nextInt(5) == 0;
                if (stop) {
                    int rxBase = d.fe.getVringBase(0);
                    int txBase = d.fe.getVringBase(1);
                    check(before, true);
                    for (EvilDriver.Ring g : d.rings) {
                        d.fe.setVringBase(g.index, g.index == 0 ? rxBase : txBase);
                        d.fe.setVringKick(g.index, g.kick);
                        d.fe.setVringEnable(g.index, true);
                    }
                } else {
                    check(before, false);
                }
            }
            drain();
        }

        /** Enough RX buffers for every frame left, all TX frames used: each sent once, in order. */
        void drain() {
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(5);
            while (!port.frames.isEmpty() || !tx.inFlight.isEmpty()) {
                if (System.nanoTime() > deadline) {
                    throw new AssertionError("frames or TX chains left: " + port.frames.size() + " in the port, "
                            + tx.inFlight.size() + " TX chains in flight; " + where);
                }
                reap(rx);
                reap(tx);
                while (postRx()) {
                    // posted
                }
                rx.ring.kick();
                tx.ring.kick();
                LockSupport.parkNanos(200_000);
            }
            List<Integer> sent = new ArrayList<>(port.sent);
            List<Integer> all = new ArrayList<>();
            for (int i = 0; i < txNext; i++) {
                all.add(i);
            }
            assertThat(sent).as("TX frames sent, each once and in order; " + where).isEqualTo(all);
        }

        @Override
        public void close() {
            d.close();
            server.close();
            dev.close();
            for (int i = 0; i < 2; i++) {
                logs[i].close();
                logFds[i].close();
            }
        }
    }

    @ParameterizedTest(name = "packed={0} mrg={1}")
    @CsvSource({"false,false", "false,true", "true,false", "true,true"})
    void everyPageTheDeviceWritesIsMarked(boolean packed, boolean mrg) throws Exception {
        String only = System.getProperty("dirty.seed");
        long base = Long.getLong("dirty.base", 0xd1e7_0000L) + (packed ? 2 : 0) + (mrg ? 1 : 0);
        long deadline = System.nanoTime() + BUDGET_NANOS;
        for (int i = 0; i == 0 || (only == null && System.nanoTime() < deadline); i++) {
            long seed = only != null ? Long.parseLong(only) : base + 4L * i;
            if (only != null && (seed & 3) != (base & 3)) {
                return; // that seed belongs to another combination
            }
            try (Session s = new Session(seed, packed, mrg)) {
                s.run();
            }
        }
    }
}
