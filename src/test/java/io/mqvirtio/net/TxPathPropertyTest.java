package io.mqvirtio.net;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.linux.ErrnoException;
import io.mqvirtio.linux.EventFd;
import io.mqvirtio.linux.IoVec;
import io.mqvirtio.vhostuser.VhostUserServer;
import io.mqvirtio.virtio.ChainBurst;
import io.mqvirtio.virtio.PackedRing;
import io.mqvirtio.virtio.SplitRing;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Path;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.LockSupport;
import java.util.function.BooleanSupplier;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * The device's transmit path against a model of it, with a recording port and a hostile driver: the driver posts
 * random TX chains (frames of 0 to 65,550 bytes, header included, in one buffer or cut over up to eight descriptors at
 * any place, the header too; indirect tables; zero-length descriptors; a writable part after the frame; one-buffer
 * chains the burst takes mixed with ones only pop takes; some frames rewritten after they were offered, before the
 * kick; the ring disabled now and then), split and packed, IN_ORDER and EVENT_IDX at random. The port sends frame by
 * frame, takes bursts ({@link Port#sendBurst}), or batches ({@link Port#queue}, {@link Port#flush}, frames above a 2
 * KiB slot sent on their own, some results EAGAIN or EIO); a port with a descriptor also sometimes would block (-1) or
 * refuses a frame with an ErrnoException, and a batching one sometimes keeps the frames of a flush from one on (no
 * room: they must come first in the next flush, after its EPOLLOUT edge).
 *
 * <p>What holds, checked after every step: the frames the port is handed are exactly the chains' readable bytes, in
 * ring order, byte-exact (a frame rewritten after it was offered: each byte the old or the new one), each once; a
 * frame shorter than the header never reaches the port and is an error; a refusal (send's ErrnoException, a flush's
 * -EIO) is an error, an EAGAIN of a flush a drop, a frame of a disabled ring a drop, and the ring goes on; a frame
 * that would block is handed to the port again (the port's EPOLLOUT edge), and before any later one, as is one a
 * flush kept (its chain already used); the used entries (ids, length 0, IN_ORDER: one for a run; split: the used index moved by its length) come in ring order; packets, bytes (beyond the 12-byte header),
 * errors and drops are exact. Nothing of guest memory is written but the rings' used parts (the data area and a split
 * ring's descriptors and avail ring stay as the driver wrote them). A bad chain (a buffer outside memory or across its
 * end, readable after writable, a loop or a next out of range, a head or a packed id out of range, a bad indirect
 * table) breaks the TX ring with its error eventfd once the model's prefix before it went out, counted once; the RX
 * ring still takes a frame; a packed id twice in flight breaks it or not, after a prefix. The worker answers commands
 * and sleeps when idle. Each session is reproducible from the seed its failure names ({@code -Dtx.seed=...} runs that
 * one alone; the port's choices and the worker's bursts follow the timing, the driver's do not).
 */
@Timeout(120)
class TxPathPropertyTest {
    private static final byte PATTERN = (byte) 0x5A;
    private static final long MEM = 32L << 20;
    /** Time per combination (-Dtx.millis=... for a longer soak; -Dtx.base=... for other seeds). */
    private static final long BUDGET_NANOS = TimeUnit.MILLISECONDS.toNanos(Long.getLong("tx.millis", 400));
    private static final int SLOT = 2048;

    @TempDir
    Path dir;

    enum Mode { FRAME, BURST, BATCH }

    enum Outcome { SENT, REFUSED, BLOCKED, DROPPED, FAILED }

    /** What the port did with one frame it was handed. */
    record Event(byte[] frame, Outcome outcome) {}

    /** A port that records every frame it is handed, and what it did with it. */
    static final class RecordingPort extends OnePortBackend {
        final Mode mode;
        final boolean blocky;
        final boolean readsFrames;
        final int batch;
        final Random r;
        final EventFd fd;
        final ConcurrentLinkedQueue<Event> log = new ConcurrentLinkedQueue<>();
        final ConcurrentLinkedQueue<byte[]> rxFrames = new ConcurrentLinkedQueue<>();
        final List<byte[]> queued = new ArrayList<>();
        int blockedRun;

        RecordingPort(Mode mode, boolean blocky, long seed) {
            super("recording");
            this.mode = mode;
            this.blocky = blocky;
            this.r = new Random(seed * 31 + 7);
            this.readsFrames = r.nextBoolean();
            this.batch = mode == Mode.BATCH ? 1 + r.nextInt(32) : 0;
            this.fd = blocky ? EventFd.create() : null;
        }

        static byte[] bytes(IoVec v) {
            byte[] f = new byte[(int) v.totalBytes()];
            v.copyTo(MemorySegment.ofArray(f), 0, f.length);
            return f;
        }

        long send(byte[] f) {
            if (blocky) {
                int k = r.nextInt(10);
                if (k < 2 && blockedRun < 3) {
                    blockedRun++;
                    log.add(new Event(f, Outcome.BLOCKED));
                    return -1;
                }
                blockedRun = 0;
                if (k == 2) {
                    log.add(new Event(f, Outcome.REFUSED));
                    throw new ErrnoException("test write", ErrnoException.EIO);
                }
            }
            log.add(new Event(f, Outcome.SENT));
            return f.length;
        }

        @Override
        public Port open(int pair) {
            return new Port() {
                @Override
                public int readFd() {
                    return fd != null ? fd.fd() : POLL;
                }

                @Override
                public long send(IoVec frame) {
                    return RecordingPort.this.send(bytes(frame));
                }

                @Override
                public boolean sendsBursts() {
                    return mode == Mode.BURST;
                }

                @Override
                public void sendBurst(ChainBurst burst, int from, int n) {
                    burst.checkRange(from, n);
                    for (int i = from; i < from + n; i++) {
                        int len = burst.length(i);
                        assertThat(len).as("a burst frame shorter than the header").isGreaterThanOrEqualTo(VirtioNet.HDR_SIZE);
                        byte[] f = new byte[len];
                        MemorySegment.copy(MemorySegment.NULL.reinterpret(Long.MAX_VALUE), ValueLayout.JAVA_BYTE,
                                burst.hostAddress(i), f, 0, len);
                        log.add(new Event(f, Outcome.SENT));
                    }
                }

                @Override
                public int batch() {
                    return batch;
                }

                @Override
                public boolean queue(IoVec frame) {
                    if (frame.totalBytes() > SLOT || queued.size() == batch) {
                        return false;
                    }
                    queued.add(bytes(frame));
                    return true;
                }

                @Override
                public int flush(long[] results) {
                    int n = queued.size();
                    // with a descriptor, now and then no room from one frame on: it and the rest are kept, in order
                    int settled = blocky && n > 0 && r.nextInt(4) == 0 ? r.nextInt(n) : n;
                    for (int i = 0; i < settled; i++) {
                        byte[] f = queued.get(i);
                        int k = r.nextInt(16);
                        Outcome o = k == 0 ? Outcome.DROPPED : k == 1 ? Outcome.FAILED : Outcome.SENT;
                        results[i] = o == Outcome.DROPPED ? -ErrnoException.EAGAIN
                                : o == Outcome.FAILED ? -ErrnoException.EIO : f.length;
                        log.add(new Event(f, o));
                    }
                    queued.subList(0, settled).clear();
                    return settled;
                }

                @Override
                public void discard() {
                    for (byte[] f : queued) {
                        log.add(new Event(f, Outcome.DROPPED));
                    }
                    queued.clear();
                }

                @Override
                public boolean readsFrames() {
                    return readsFrames;
                }

                @Override
                public long receive(IoVec into) {
                    return receiveFrom(rxFrames, into);
                }

                @Override
                public void close() {}
            };
        }

        @Override
        public void close() {
            if (fd != null) {
                fd.close();
            }
        }
    }

    /** A buffer of a chain: its offset in the driver's memory (or a guest address outside it), length, writable. */
    record Buf(long off, int len, boolean writable) {}

    /** A TX chain as the driver posted it. */
    static final class Chain {
        int id;            // split: head; packed: buffer id
        int slots;         // ring entries it takes
        final List<Integer> descs = new ArrayList<>();
        final List<Buf> bufs = new ArrayList<>();
        byte[] frame;      // the readable bytes as the device must see them
        byte[] old;        // the bytes before a rewrite after the chain was offered, or null
        String bad;        // why the device must refuse it, or null
    }

    final class Session implements AutoCloseable {
        final long seed;
        final Random r;
        final boolean packed;
        final int size;
        final RecordingPort port;
        final NetDevice dev;
        final VhostUserServer server;
        final EvilDriver d;
        final EvilDriver.Ring tx;
        final String where;
        final byte[] shadow; // the data area as the driver wrote it
        final ArrayDeque<Integer> freeDesc = new ArrayDeque<>();
        final ArrayDeque<Integer> freeIds = new ArrayDeque<>();
        int freeSlots;
        // the model
        final ArrayDeque<Chain> inFlight = new ArrayDeque<>();   // posted, not used yet, in ring order
        final List<Chain> toPort = new ArrayList<>();            // every good chain of a header or more, in ring order
        int portChecked;                                          // events of the port's log checked so far
        int framesChecked;                                        // of toPort
        long packets, bytes, errors, drops;
        boolean terminal;
        boolean disabled;    // the TX ring disabled this step (SET_VRING_ENABLE 0)
        String badReason;
        byte[] ringCopy;     // split: the TX descriptor table and avail ring as the driver left them

        Session(long seed, boolean packed, Mode mode) {
            this.seed = seed;
            this.r = new Random(seed);
            this.packed = packed;
            int[] sizes = packed ? new int[] {8, 16, 50, 64, 256} : new int[] {8, 16, 64, 256};
            this.size = sizes[r.nextInt(sizes.length)];
            long features = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioFeatures.F_INDIRECT_DESC)
                    | (packed ? VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED) : 0)
                    | (r.nextBoolean() ? VirtioFeatures.bit(VirtioFeatures.F_IN_ORDER) : 0)
                    | (r.nextBoolean() ? VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX) : 0);
            boolean blocky = mode != Mode.BURST && r.nextBoolean();
            port = new RecordingPort(mode, blocky, seed);
            this.where = "seed " + seed + " (packed=" + packed + " mode=" + mode + " blocky=" + blocky + " batch="
                    + port.batch + " size=" + size + " features=0x" + Long.toHexString(features) + ")";
            dev = new NetDevice(NetDevice.Config.of("txprop", 1), port);
            server = VhostUserServer.listen(dir.resolve("t" + seed + ".sock"), dev);
            d = new EvilDriver(server.path(), 1, size, features, MEM);
            d.mem.asSlice(d.dataOff).fill(PATTERN);
            shadow = new byte[(int) MEM];
            Arrays.fill(shadow, (int) d.dataOff, (int) MEM, PATTERN);
            tx = d.tx(0);
            for (int i = 0; i < size; i++) {
                freeDesc.add(i);
                freeIds.add(i);
            }
            freeSlots = size;
        }

        // ---- the driver ----

        void put(long off, byte[] b, int from, int n) {
            MemorySegment.copy(b, from, d.mem, ValueLayout.JAVA_BYTE, off, n);
            System.arraycopy(b, from, shadow, (int) off, n);
        }

        void sync(long off, long n) {
            MemorySegment.copy(d.mem, ValueLayout.JAVA_BYTE, off, shadow, (int) off, (int) n);
        }

        int frameLen() {
            int k = r.nextInt(20);
            if (k == 0) {
                return r.nextInt(VirtioNet.HDR_SIZE);
            } else if (k < 3) {
                return VirtioNet.HDR_SIZE + r.nextInt(65_551);
            } else if (k < 5) {
                return SLOT + r.nextInt(5) - 2;
            } else if (k < 7) {
                return 1526 + r.nextInt(5) - 2;
            }
            return VirtioNet.HDR_SIZE + r.nextInt(1500);
        }

        long alloc(long len) {
            return d.alloc(Math.max(len, 1) + 64);
        }

        /** Posts one random chain (a bad one with probability {@code badOdds}); false if the ring has no room. */
        boolean post(double badOdds) {
            int room = packed ? freeSlots : freeDesc.size();
            if (room == 0 || (packed && freeIds.isEmpty()) || MEM - d.alloc(0) < 1 << 20) {
                return false;
            }
            Chain c = new Chain();
            byte[] f = new byte[frameLen()];
            r.nextBytes(f);
            c.frame = f;
            boolean indirect = r.nextInt(6) == 0;
            int pieces = r.nextInt(3) == 0 ? 2 + r.nextInt(7) : 1;
            if (!indirect && pieces > room) {
                pieces = 1;
            }
            // cut points anywhere, the header included; zero-length pieces now and then
            int[] cuts = new int[pieces + 1];
            cuts[pieces] = f.length;
            for (int i = 1; i < pieces; i++) {
                cuts[i] = r.nextInt(4) == 0 ? cuts[i - 1] : cuts[i - 1] + r.nextInt(f.length - cuts[i - 1] + 1);
            }
            for (int i = 0; i < pieces; i++) {
                int n = cuts[i + 1] - cuts[i];
                long off = alloc(n);
                put(off, f, cuts[i], n);
                c.bufs.add(new Buf(off, n, false));
            }
            int slotsLeft = indirect ? Integer.MAX_VALUE : room - pieces;
            // (a packed TX ring's indirect tables have their WRITE flags ignored, as DPDK's vhost ignores them: DPDK's
            // virtio marks its TX tables' entries WRITE; PackedHostileRingTest. So no writable part there.)
            if (r.nextInt(12) == 0 && slotsLeft > 0 && !(packed && indirect)) {
                int n = r.nextInt(300); // a writable part after the frame: not the frame's, never written
                c.bufs.add(new Buf(alloc(n), n, true));
            }
            if (r.nextDouble() < badOdds) {
                spoil(c, indirect, room);
            }
            if (packed) {
                postPacked(c, indirect);
            } else {
                postSplit(c, indirect);
            }
            if (c.bad == null && r.nextInt(15) == 0 && f.length > 0) {
                // rewritten after it was offered, before the kick: the device reads either
                c.old = f.clone();
                byte[] g = f.clone();
                int at = r.nextInt(f.length);
                int n = 1 + r.nextInt(Math.min(64, f.length - at));
                for (int i = at; i < at + n; i++) {
                    g[i] ^= (byte) (1 + r.nextInt(255));
                }
                int pos = 0;
                for (Buf b : c.bufs) {
                    if (!b.writable) {
                        put(b.off, g, pos, b.len);
                        pos += b.len;
                    }
                }
                c.frame = g;
            }
            inFlight.add(c);
            if (c.bad != null) {
                terminal = true;
                badReason = c.bad;
            }
            return true;
        }

        void spoil(Chain c, boolean indirect, int room) {
            int k = r.nextInt(indirect ? 5 : 4);
            if (k == 2 && (!indirect && c.bufs.size() == room || packed && indirect)) {
                k = 0; // no ring entry left for one more descriptor; or a packed TX table, whose WRITE flags are ignored
            }
            switch (k) {
                case 0 -> {
                    Buf b = c.bufs.getLast(); // across the end of guest memory
                    c.bufs.set(c.bufs.size() - 1, new Buf(MEM - 8, Math.max(b.len(), 16), b.writable()));
                    c.bad = "a buffer across the end of guest memory";
                }
                case 1 -> {
                    c.bufs.set(0, new Buf(-(1L << 20), Math.max(c.bufs.getFirst().len(), 1), false)); // below it
                    c.bad = "a buffer outside guest memory";
                }
                case 2 -> {
                    c.bufs.addFirst(new Buf(alloc(16), 16, true));
                    c.bad = "readable after writable";
                }
                case 3 -> c.bad = packed ? (r.nextBoolean() ? "id out of range" : "id in flight")
                        : (r.nextBoolean() ? "head out of range" : "loop");
                default -> c.bad = "bad indirect table";
            }
            if (c.bad.equals("loop") && (indirect || c.bufs.size() < 2)) {
                c.bad = "next out of range";
            }
        }

        /** Writes a table entry: split layout {@code a} flags, {@code bb} next; packed {@code a} id, {@code bb} flags. */
        void tableEntry(long e, Buf b, int a, int bb) {
            d.mem.set(EvilDriver.U64, e, d.gpa(b.off));
            d.mem.set(EvilDriver.U32, e + 8, b.len);
            d.mem.set(EvilDriver.U16, e + 12, (short) a);
            d.mem.set(EvilDriver.U16, e + 14, (short) bb);
        }

        void postSplit(Chain c, boolean indirect) {
            int n = c.bufs.size();
            if (indirect) {
                long t = alloc(16L * n);
                for (int i = 0; i < n; i++) {
                    Buf b = c.bufs.get(i);
                    boolean last = i + 1 == n;
                    boolean pastEnd = last && "next out of range".equals(c.bad);
                    int flags = (b.writable ? SplitRing.DESC_F_WRITE : 0) | (!last || pastEnd ? SplitRing.DESC_F_NEXT : 0);
                    tableEntry(t + 16L * i, b, flags, pastEnd ? n : i + 1);
                }
                sync(t, 16L * n);
                int slot = freeDesc.poll();
                c.descs.add(slot);
                int tlen = "bad indirect table".equals(c.bad) ? 16 * n + 8 : 16 * n;
                tx.desc(slot, d.gpa(t), tlen, SplitRing.DESC_F_INDIRECT, 0);
            } else {
                for (int i = 0; i < n; i++) {
                    c.descs.add(freeDesc.poll());
                }
                for (int i = 0; i < n; i++) {
                    Buf b = c.bufs.get(i);
                    boolean last = i + 1 == n;
                    int flags = (b.writable ? SplitRing.DESC_F_WRITE : 0) | (last ? 0 : SplitRing.DESC_F_NEXT);
                    int next = last ? 0 : c.descs.get(i + 1);
                    if ("loop".equals(c.bad) && last) {
                        flags |= SplitRing.DESC_F_NEXT;
                        next = c.descs.getFirst();
                    } else if ("next out of range".equals(c.bad) && last) {
                        flags |= SplitRing.DESC_F_NEXT;
                        next = size + r.nextInt(100);
                    }
                    tx.desc(c.descs.get(i), d.gpa(b.off), b.len, flags, next);
                }
            }
            c.id = c.descs.getFirst();
            c.slots = c.descs.size();
            tx.offer("head out of range".equals(c.bad) ? size + r.nextInt(1000) : c.id);
        }

        void postPacked(Chain c, boolean indirect) {
            int id;
            if ("id in flight".equals(c.bad) && !inFlight.isEmpty()) {
                id = inFlight.getLast().id;
            } else {
                if ("id in flight".equals(c.bad)) {
                    c.bad = "id out of range";
                }
                id = freeIds.poll();
            }
            c.id = id;
            int ringId = "id out of range".equals(c.bad) ? size + r.nextInt(1000) : id;
            int headFlags;
            int n = c.bufs.size();
            if (indirect) {
                long t = alloc(16L * n);
                for (int i = 0; i < n; i++) {
                    Buf b = c.bufs.get(i);
                    tableEntry(t + 16L * i, b, 0, b.writable ? PackedRing.F_WRITE : 0);
                }
                sync(t, 16L * n);
                int tlen = "bad indirect table".equals(c.bad) ? 16 * n + 8 : 16 * n;
                headFlags = PackedRing.F_INDIRECT;
                tx.packedAt(0, d.gpa(t), tlen, ringId, headFlags);
                c.slots = 1;
            } else {
                c.slots = n;
                headFlags = 0;
                for (int i = 0; i < n; i++) {
                    Buf b = c.bufs.get(i);
                    boolean last = i + 1 == n;
                    int f = (b.writable ? PackedRing.F_WRITE : 0) | (last ? 0 : PackedRing.F_NEXT);
                    tx.packedAt(i, d.gpa(b.off), b.len, ringId, f);
                    if (i == 0) {
                        headFlags = f;
                    }
                }
            }
            freeSlots -= c.slots;
            tx.publishPacked(headFlags, c.slots);
        }

        /** The next used entry, as {id, len}, or null; packed: the ring position moved past it by {@code slots}. */
        int[] nextUsed() {
            if (!packed) {
                return tx.usedAtCursor();
            }
            return tx.packedUsedAtCursor();
        }

        /** Past a used entry for {@code chains} chains taking {@code slots} descriptors (split: the index counts chains). */
        void advanceUsed(int chains, int slots) {
            if (packed) {
                tx.skipPackedUsed(slots);
            } else {
                assertThat(tx.usedAhead()).as("a used entry for %d chains; the used index counts %d; %s", chains,
                        tx.usedAhead(), where).isGreaterThanOrEqualTo(chains);
                tx.skipUsed(chains);
            }
        }

        void release(Chain c) {
            if (packed) {
                freeSlots += c.slots;
                freeIds.add(c.id);
            } else {
                freeDesc.addAll(c.descs);
            }
        }

        // ---- the model ----

        /** What the device does with the chains posted (up to a bad one): what the port is handed, errors. */
        void model(List<Chain> chains) {
            for (Chain c : chains) {
                if (c.bad != null && !usable(c)) {
                    return;
                }
                if (disabled) {
                    drops++; // a started ring that is disabled is consumed, not sent
                } else if (c.frame.length < VirtioNet.HDR_SIZE) {
                    errors++;
                } else {
                    toPort.add(c);
                }
                if (c.bad != null) {
                    return; // a packed id twice: taken after its namesake was used, or the ring broken
                }
            }
        }

        /** A chain the device may take: a good one, or one whose packed id its namesake may have freed meanwhile. */
        boolean usable(Chain c) {
            return c.bad == null || c.bad.equals("id in flight");
        }

        /** Takes the port's log as far as it goes: the frames in order, each once, and the counters it implies. */
        int checkPort() {
            Event[] events = port.log.toArray(Event[]::new);
            int i = portChecked;
            for (; i < events.length; i++) {
                Event e = events[i];
                assertThat(framesChecked).as("the port was handed more frames than the ring had (event %d, %d bytes, %s); %s",
                        i, e.frame.length, e.outcome, where).isLessThan(toPort.size());
                Chain c = toPort.get(framesChecked);
                checkFrame(e.frame, c, "frame " + framesChecked + " (" + e.outcome + ")");
                switch (e.outcome) {
                    case BLOCKED -> {
                        continue; // the next event must be this chain's frame again: framesChecked stays
                    }
                    case SENT -> {
                        packets++;
                        bytes += e.frame.length - VirtioNet.HDR_SIZE;
                    }
                    case REFUSED, FAILED -> errors++;
                    case DROPPED -> drops++;
                }
                framesChecked++;
            }
            portChecked = i;
            return framesChecked;
        }

        void checkFrame(byte[] got, Chain c, String what) {
            if (Arrays.equals(got, c.frame)) {
                return;
            }
            assertThat(got.length).as("%s: length; %s", what, where).isEqualTo(c.frame.length);
            for (int j = 0; j < got.length; j++) {
                if (got[j] != c.frame[j] && (c.old == null || got[j] != c.old[j])) {
                    throw new AssertionError(what + " of " + got.length + " bytes differs from byte " + j + "; " + where);
                }
            }
        }

        QueueCounters.Snapshot txCounters() {
            return dev.counters().get(1);
        }

        /** Waits for every good chain posted to be used, checks the used entries, the port and the counters. */
        void settle() {
            int want = inFlight.size();
            List<Chain> used = new ArrayList<>();
            await(() -> {
                takeUsed(used);
                return used.size() == want && checkPort() == toPort.size();
            }, () -> "the device to use " + want + " chains and hand the port " + toPort.size() + " frames (now "
                    + used.size() + " used, " + framesChecked + " frames, " + txCounters() + "); " + where);
            checkCounters(0);
        }

        void checkCounters(long extraErrors) {
            await(() -> {
                QueueCounters.Snapshot s = txCounters();
                // bytes too: the worker adds a burst's packets, then its bytes (seen: packets there, bytes not yet)
                return s.packets() >= packets && s.bytes() >= bytes && s.errors() >= errors + extraErrors
                        && s.drops() >= drops;
            }, () -> "TX counters " + txCounters() + "; " + where);
            QueueCounters.Snapshot s = txCounters();
            assertThat(new long[] {s.packets(), s.bytes(), s.errors(), s.drops()}).as("TX packets, bytes, errors, drops; " + where)
                    .containsExactly(packets, bytes, errors + extraErrors, drops);
        }

        /** Reads the used entries that came, checking each against the chains in ring order. */
        void takeUsed(List<Chain> used) {
            int[] u;
            while ((u = nextUsed()) != null) {
                assertThat(u[1]).as("a TX used length; " + where).isZero();
                Chain head = inFlight.peek();
                assertThat(head).as("a used entry (id %d) the model has no chain for; %s", u[0], where).isNotNull();
                assertThat(usable(head)).as("a bad chain used (id %d); %s", u[0], where).isTrue();
                // one used entry (packed: descriptor), or (IN_ORDER) one for a run of chains naming its last (split:
                // in the run's first slot, the used index moved on by the run's length)
                int slots = 0;
                int chains = 0;
                boolean found = false;
                for (Chain c : inFlight) {
                    if (!usable(c)) {
                        break;
                    }
                    slots += c.slots;
                    chains++;
                    if (c.id == u[0]) {
                        found = true;
                        break;
                    }
                    if ((d.negotiated & VirtioFeatures.bit(VirtioFeatures.F_IN_ORDER)) == 0) {
                        break;
                    }
                }
                assertThat(found).as("used id %d, in ring order (next %d); %s", u[0], head.id, where).isTrue();
                Chain c;
                do {
                    c = inFlight.poll();
                    used.add(c);
                    release(c);
                } while (c.id != u[0]);
                advanceUsed(chains, slots);
            }
        }

        void checkMemory() {
            long end = Math.min(MEM, d.alloc(0) + 4096); // beyond: the pattern, which nothing but a stray write changes
            byte[] now = new byte[(int) (end - d.dataOff)];
            MemorySegment.copy(d.mem, ValueLayout.JAVA_BYTE, d.dataOff, now, 0, now.length);
            int m = Arrays.mismatch(now, 0, now.length, shadow, (int) d.dataOff, (int) end);
            assertThat(m).as("guest memory written at offset %d; %s", d.dataOff + m, where).isEqualTo(-1);
            if (ringCopy != null) {
                assertThat(ringBytes()).as("the split TX descriptor table or avail ring written; " + where).isEqualTo(ringCopy);
            }
        }

        byte[] ringBytes() {
            long from = tx.descOff;
            long to = tx.availOff + 4 + 2L * size;
            byte[] b = new byte[(int) (to - from)];
            MemorySegment.copy(d.mem, ValueLayout.JAVA_BYTE, from, b, 0, b.length);
            return b;
        }

        // ---- the run ----

        void run() throws Exception {
            int steps = 10 + r.nextInt(30);
            double badOdds = r.nextInt(3) == 0 ? 0.03 : 0;
            boolean cpuChecked = false;
            for (int step = 0; step < steps && !terminal; step++) {
                int n = r.nextInt(4) == 0 ? 0 : 1 + r.nextInt(Math.min(size, 80));
                if (disabled != (r.nextInt(10) == 0)) {
                    disabled = !disabled;
                    d.fe.setVringEnable(1, !disabled); // answered (REPLY_ACK) once the worker took it
                }
                List<Chain> posted = new ArrayList<>();
                for (int i = 0; i < n && !terminal; i++) {
                    if (!post(badOdds)) {
                        break;
                    }
                    posted.add(inFlight.getLast());
                }
                if (!packed) {
                    ringCopy = ringBytes();
                }
                model(posted);
                tx.kick();
                if (terminal) {
                    break;
                }
                settle();
                checkMemory();
                if (!cpuChecked && r.nextInt(4) == 0) {
                    cpuChecked = true;
                    checkSleeps();
                }
            }
            if (terminal) {
                finishBroken();
            }
            answersCommands();
            checkMemory();
        }

        void checkSleeps() throws InterruptedException {
            WorkerChecks.sleeps(dev, 1, "with nothing to send", where);
        }

        void answersCommands() {
            WorkerChecks.answersCommand(dev, 1, where);
        }

        /** A bad chain was posted: the model's prefix before it goes out, then the TX ring breaks; RX goes on. */
        void finishBroken() {
            boolean dupId = "id in flight".equals(badReason);
            if (dupId) {
                // taken after its namesake was used, or refused while it is in flight: either way a prefix
                LockSupport.parkNanos(TimeUnit.MILLISECONDS.toNanos(100));
                List<Chain> used = new ArrayList<>();
                takeUsed(used);
                checkPort();
            } else {
                long[] signalled = {0};
                await(() -> (signalled[0] += tx.err.drain()) > 0, () -> "the TX ring to break at a bad chain (" + badReason
                        + "); " + where);
                List<Chain> used = new ArrayList<>();
                await(() -> {
                    takeUsed(used);
                    return checkPort() == toPort.size() && (inFlight.isEmpty() || inFlight.peek().bad != null);
                }, () -> "the chains before the bad one (" + badReason + ") used and sent: " + framesChecked + " of "
                        + toPort.size() + " frames, " + inFlight.size() + " chains left; " + where);
                checkCounters(1);
            }
            if (!packed) {
                assertThat(ringBytes()).as("the split TX descriptor table or avail ring written; " + where).isEqualTo(ringCopy);
                ringCopy = null;
            }
            // the RX ring still takes a frame
            EvilDriver.Ring rx = d.rx(0);
            long off = d.alloc(2048);
            sync(off, 2048);
            byte[] f = new byte[12 + 60];
            r.nextBytes(f);
            port.rxFrames.add(f);
            if (packed) {
                rx.packed(0, d.gpa(off), 2048, 0, PackedRing.F_WRITE);
            } else {
                rx.desc(0, d.gpa(off), 2048, SplitRing.DESC_F_WRITE, 0);
                rx.offer(0);
            }
            rx.kick();
            if (port.fd != null) {
                port.fd.signal(); // the port's readable edge
            }
            await(() -> packed ? rx.packedUsed(0) : rx.usedIdx() == 1, () -> "an RX frame after the TX ring broke; " + where);
            byte[] got = new byte[f.length];
            MemorySegment.copy(d.mem, ValueLayout.JAVA_BYTE, off, got, 0, got.length);
            got[10] = f[10];
            got[11] = f[11]; // num_buffers
            assertThat(got).as("the RX frame after the TX ring broke; " + where).isEqualTo(f);
            sync(off, 2048);
        }

        @Override
        public void close() {
            d.close();
            server.close();
            dev.close();
            port.close();
        }
    }

    static void await(BooleanSupplier cond, java.util.function.Supplier<String> what) {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(5);
        while (!cond.getAsBoolean()) {
            if (System.nanoTime() > deadline) {
                throw new AssertionError("timed out waiting for " + what.get());
            }
            LockSupport.parkNanos(200_000);
        }
    }

    @ParameterizedTest(name = "packed={0} mode={1}")
    @CsvSource({"false,FRAME", "false,BURST", "false,BATCH", "true,FRAME", "true,BURST", "true,BATCH"})
    void transmitPathMatchesTheModel(boolean packed, Mode mode) throws Exception {
        String only = System.getProperty("tx.seed");
        long base = Long.getLong("tx.base", 0x7e5_0000L) + (packed ? 3 : 0) + mode.ordinal();
        long deadline = System.nanoTime() + BUDGET_NANOS;
        for (int i = 0; i == 0 || (only == null && System.nanoTime() < deadline); i++) {
            long seed = only != null ? Long.parseLong(only) : base + 8L * i;
            if (only != null && (seed & 7) != (base & 7)) {
                return; // that seed belongs to another combination
            }
            try (Session s = new Session(seed, packed, mode)) {
                s.run();
            }
        }
    }
}
