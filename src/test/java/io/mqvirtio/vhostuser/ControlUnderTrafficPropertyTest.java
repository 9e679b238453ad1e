package io.mqvirtio.vhostuser;

import static io.mqvirtio.vhostuser.RawPeer.state;
import static io.mqvirtio.vhostuser.RawPeer.u64;
import static io.mqvirtio.virtio.SplitRing.AVAIL_IDX;
import static io.mqvirtio.virtio.SplitRing.AVAIL_RING;
import static io.mqvirtio.virtio.SplitRing.DESC_F_WRITE;
import static io.mqvirtio.virtio.SplitRing.USED_IDX;
import static io.mqvirtio.virtio.SplitRing.USED_RING;
import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.backend.LoopbackBackend;
import io.mqvirtio.linux.EventFd;
import io.mqvirtio.linux.IoVec;
import io.mqvirtio.linux.MemFd;
import io.mqvirtio.net.NetDevice;
import io.mqvirtio.net.PacketBackend;
import io.mqvirtio.net.Port;
import io.mqvirtio.net.QueueCounters;
import io.mqvirtio.net.VirtioNet;
import io.mqvirtio.virtio.ChainBurst;
import io.mqvirtio.virtio.PackedRing;
import io.mqvirtio.virtio.RingBase;
import io.mqvirtio.virtio.Rings;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.VarHandle;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.ArrayDeque;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.locks.LockSupport;
import java.util.concurrent.locks.ReentrantLock;
import java.util.function.LongSupplier;
import java.util.zip.CRC32C;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * Random control requests, valid and invalid, in any order, against a real {@link NetDevice} (two pairs, the loopback
 * backend) while a guest thread of the test's own keeps TX and RX flowing on rings it writes by hand in the memory it
 * shares (split for even seeds, packed for odd ones): GET/SET_VRING_BASE, SET_VRING_NUM/ADDR on running and stopped
 * rings, SET_VRING_KICK/CALL/ERR with the ring's own eventfd, another ring's (so two rings share one), one closed right
 * after it was sent, a memfd, none; SET_VRING_ENABLE on, off and 2; SET_MEM_TABLE the same, with a second region,
 * moved, shrunk under the data or under two rings; ADD/REM_MEM_REG of that region and of the main one; SET_FEATURES
 * with EVENT_IDX, MRG_RXBUF, PACKED, IN_ORDER, LOG_ALL changed or VERSION_1 dropped; SET_LOG_BASE good and bad;
 * RESET_OWNER (RESET_DEVICE is not offered); SET/GET_STATUS; GET/SET_CONFIG; ring indexes beyond the device; reconnects; and a full
 * restore (QEMU's set-up again) now and then.
 *
 * <p>What holds always, checked after every request: the device is not dead; every request with NEED_REPLY is
 * answered within {@link #REPLY_MS} (an ack, or its own reply), and the connection is closed only where the protocol
 * says so (a refused request with a reply of its own: SET_LOG_BASE with a bad log, GET_CONFIG, GET_VRING_BASE of a
 * ring the device lacks); GET_VRING_BASE names its ring, GET_STATUS says what the last SET_STATUS set (0 after a
 * reset), the GET requests say what they said at first; a restore to QEMU's set-up is acked request by request
 * whatever came before. Now and then the guest holds still: each pair's worker answers a command and then spends
 * under 30 ms of CPU in 100 ms with nothing asked. Nothing is ever read or written outside guest memory (the JVM
 * would crash).
 *
 * <p>What holds while the frontend has told the truth (its memory table, features and ring layouts are the guest's
 * own since the last restore; a split ring resumes at its used index, so a wrong SET_VRING_BASE, a stop, a reset, a
 * parked ring or a new kick fd keep it true; a packed ring resumes at its base, so only the one GET_VRING_BASE gave
 * does; a moved or shrunk table, another ring size or address, PACKED or IN_ORDER switched or no VERSION_1 end it
 * until the next restore): each used entry names a chain the guest offered and that is in flight (used at most once
 * per offer); an RX frame is, byte for byte but for num_buffers, a frame the port handed the device (each handed
 * frame delivered at most once), and one the guest sent since the restore comes back whole on its own pair, once; a
 * TX frame reached the port at most once; no ring breaks (the queues' error counters stay). Every 100 steps and at
 * the end, after a reset or a stop of every ring and QEMU's set-up: 32 frames per pair go round the loop, each exactly
 * once, and the counters move by exactly what the guest saw. Over the device's life TX packets equal the frames the
 * port was handed and RX packets are at most the frames it handed out; after the session, the process holds the
 * descriptors and memfd mappings it held before it.
 *
 * <p>Seeded: a failure names its seed ({@code -Dcontrol.seed=...} replays that one); {@code -Dcontrol.millis} sets
 * how long the test runs new seeds (default 3000 ms; two seeds at least), {@code -Dcontrol.steps} the random steps per
 * seed (default 300).
 * docs/fuzzing.md has the details.
 */
@Timeout(300)
class ControlUnderTrafficPropertyTest {
    private static final long BUDGET_NANOS = TimeUnit.MILLISECONDS.toNanos(Long.getLong("control.millis", 3000));
    private static final int STEPS = Integer.getInteger("control.steps", 300);
    private static final int PAIRS = 2, RINGS = 2 * PAIRS, N = 64, BUF = 2048, MTU = 1500;
    /** The largest frame the loopback holds: header, Ethernet header, VLAN tag, MTU. */
    private static final int MAX_FRAME = VirtioNet.HDR_SIZE + 14 + 4 + MTU;
    /** How long a request may wait for its answer. */
    private static final long REPLY_MS = 5000;
    private static final long PF = (1L << Protocol.PF_REPLY_ACK) | (1L << Protocol.PF_MQ)
            | (1L << Protocol.PF_CONFIGURE_MEM_SLOTS) | (1L << Protocol.PF_STATUS) | (1L << Protocol.PF_LOG_SHMFD);
    /** The log covers guest-physical addresses up to 2 GiB: the main region, moved or not, and the extra one. */
    private static final long LOG_BYTES = 64 << 10;
    private static final long EXTRA_GPA = 0x7000_0000L, EXTRA_BYTES = 64 << 10, EXTRA_UVA = 0x7000_0000_0000L;
    private static final long PACKED = VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED);
    private static final long IN_ORDER = VirtioFeatures.bit(VirtioFeatures.F_IN_ORDER);
    private static final long VERSION_1 = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1);
    private static final long LOG_ALL = 1L << Protocol.F_LOG_ALL;
    private static final ValueLayout.OfLong LE64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfInt LE32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfShort LE16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final VarHandle INDEX = ValueLayout.JAVA_SHORT.withOrder(ByteOrder.LITTLE_ENDIAN).varHandle();

    @TempDir
    Path dir;

    /** A frame's identity for the record: its length and CRC32C, num_buffers (bytes 10-11, the device's) left out. */
    static long key(byte[] b, int len) {
        if (len >= VirtioNet.HDR_SIZE) {
            b[10] = 0;
            b[11] = 0;
        }
        CRC32C c = new CRC32C();
        c.update(b, 0, len);
        return ((long) len << 32) | c.getValue();
    }

    /**
     * The loopback backend, recording what its ports did: every frame handed to the RX path (by content) and every
     * frame sent (by the guest's tag, the 8 bytes after the header).
     */
    static final class RecordingLoopback implements PacketBackend {
        final LoopbackBackend loop = new LoopbackBackend(PAIRS, MTU);
        final ConcurrentHashMap<Long, Integer> handed = new ConcurrentHashMap<>();
        final ConcurrentHashMap<Long, Integer> sentTags = new ConcurrentHashMap<>();
        final AtomicLong sends = new AtomicLong(), handedOut = new AtomicLong();

        @Override
        public int maxPairs() {
            return PAIRS;
        }

        @Override
        public long features() {
            return loop.features();
        }

        @Override
        public String describe() {
            return "recording " + loop.describe();
        }

        @Override
        public void close() {
            loop.close();
        }

        private void sent(long tag) {
            sends.incrementAndGet();
            sentTags.merge(tag, 1, Integer::sum);
        }

        @Override
        public Port open(int pair) {
            Port p = loop.open(pair);
            return new Port() {
                @Override
                public int readFd() {
                    return p.readFd();
                }

                @Override
                public long send(IoVec frame) {
                    byte[] t = new byte[8];
                    if (frame.totalBytes() >= VirtioNet.HDR_SIZE + 8) {
                        frame.copyTo(VirtioNet.HDR_SIZE, MemorySegment.ofArray(t), 0, 8);
                    }
                    sent(MemorySegment.ofArray(t).get(LE64, 0));
                    return p.send(frame);
                }

                @Override
                public boolean sendsBursts() {
                    return p.sendsBursts();
                }

                @Override
                public void sendBurst(ChainBurst burst, int from, int n) {
                    for (int i = from; i < from + n; i++) {
                        long len = Integer.toUnsignedLong(burst.length(i));
                        MemorySegment f = MemorySegment.ofAddress(burst.hostAddress(i)).reinterpret(len);
                        sent(len >= VirtioNet.HDR_SIZE + 8 ? f.get(LE64, VirtioNet.HDR_SIZE) : 0);
                    }
                    p.sendBurst(burst, from, n);
                }

                @Override
                public long receive(IoVec into) {
                    long n = p.receive(into);
                    if (n > 0) {
                        byte[] b = new byte[(int) n];
                        into.copyTo(0, MemorySegment.ofArray(b), 0, n);
                        handed.merge(key(b, (int) n), 1, Integer::sum);
                        handedOut.incrementAndGet();
                    }
                    return n;
                }

                @Override
                public void reset() {
                    p.reset();
                }

                @Override
                public void close() {
                    p.close();
                }
            };
        }
    }

    /** What one frontend-and-guest run of one seed holds. */
    final class Run implements AutoCloseable {
        final long seed;
        final Random r;
        final Random gr; // the guest thread's
        final long canon; // the features the guest's driver uses
        final boolean packed; // its rings' layout
        final RecordingLoopback port = new RecordingLoopback();
        final NetDevice dev = new NetDevice(NetDevice.Config.of("ctl", PAIRS), port);
        final VhostUserServer server;
        final GuestRam ram = new GuestRam();
        final MemFd extra = MemFd.create("mqv-extra", EXTRA_BYTES);
        final MemFd log = MemFd.create("mqv-ctl-log", LOG_BYTES);
        final MemFd notAnEventFd = MemFd.create("mqv-not-eventfd", 4096);
        final GRing[] rings = new GRing[RINGS];
        final ReentrantLock lock = new ReentrantLock();
        final ArrayDeque<String> lastSteps = new ArrayDeque<>();
        RawPeer fe;
        long offered, offeredPf;
        int step;
        // the model of the session, as far as the test needs it
        boolean trusted;       // see the class comment: used entries and frames are checked
        boolean featuresOk;    // the session's features are ones the guest's rings and frames work under
        boolean logGiven;
        long errorsAtTrust;
        int status;
        final int[] stoppedAt = new int[RINGS];
        final boolean[] stopped = new boolean[RINGS];
        /** GET_VRING_BASE said where ring i stopped, and nothing has started it since (a packed ring needs it). */
        final boolean[] baseKnown = new boolean[RINGS];
        // the guest's side
        long nextTag;
        final Map<Long, Integer> epochTags = new HashMap<>(); // TX frames offered since the last restore: tag -> length
        final Set<Long> delivered = new HashSet<>();
        volatile boolean stopGuest;
        volatile Throwable guestFailure;
        Thread guest;
        long rxSeen;
        long requests, maxReplyNanos, untrusts, restores, reconnects, checkedUsed;

        Run(long seed) {
            this.seed = seed;
            // consecutive seeds give java.util.Random's first values alike: mixed first
            this.r = new Random(new java.util.SplittableRandom(seed).nextLong());
            this.gr = new Random(new java.util.SplittableRandom(~seed).nextLong());
            this.packed = (seed & 1) != 0; // so that the default run's first two seeds have one of each
            this.canon = VERSION_1 | (1L << Protocol.F_PROTOCOL_FEATURES) | VirtioFeatures.bit(VirtioNet.F_MQ)
                    | (packed ? PACKED : 0)
                    | (r.nextBoolean() ? VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX) : 0)
                    | (r.nextBoolean() ? VirtioFeatures.bit(VirtioNet.F_MRG_RXBUF) : 0);
            this.server = VhostUserServer.listen(dir.resolve("ctl-" + seed + ".sock"), dev);
            for (int i = 0; i < RINGS; i++) {
                rings[i] = new GRing(i);
            }
        }

        String where() {
            synchronized (lastSteps) {
                return "seed " + seed + " (-Dcontrol.seed=" + seed + "), features 0x" + Long.toHexString(canon)
                        + ", step " + step + ", trusted=" + trusted + ", last steps " + lastSteps;
            }
        }

        void note(String s) {
            synchronized (lastSteps) {
                if (lastSteps.size() == 12) {
                    lastSteps.poll();
                }
                lastSteps.add(s);
            }
        }

        /** Fails with {@code what} and where the run stands unless {@code holds}; the message is built only then. */
        void check(boolean holds, java.util.function.Supplier<String> what) {
            if (!holds) {
                throw new AssertionError(what.get() + "; " + where());
            }
        }

        // ---- the guest: split rings of N one-descriptor chains, each with its own buffer ----

        final class GRing {
            final int index;
            final boolean rx;
            final GuestRam.RingAt at;
            final long[] buf = new long[N];
            final long[] tag = new long[N];
            final int[] len = new int[N];
            final boolean[] inFlight = new boolean[N];
            final ArrayDeque<Integer> free = new ArrayDeque<>();
            final EventFd kick = EventFd.create(), call = EventFd.create(), err = EventFd.create();
            int availIdx, lastUsed;          // split: the driver's avail index, the next used entry to read
            int availPos, usedPos;           // packed: the driver's positions ...
            boolean availWrap, usedWrap;     // ... and their wrap counters

            GRing(int index) {
                this.index = index;
                this.rx = VirtioNet.isRx(index);
                if (packed) {
                    Rings.Layout l = Rings.layout(N, PACKED);
                    long base = index * GuestRam.RING_SPAN;
                    this.at = new GuestRam.RingAt(index, N, base + l.descOffset(), base + l.availOffset(),
                            base + l.usedOffset());
                } else {
                    this.at = ram.ring(index, N);
                }
                for (int i = 0; i < N; i++) {
                    buf[i] = ram.alloc(BUF);
                }
            }

            /** A new ring: its memory zeroed, every chain free. */
            void reset() {
                ram.seg().asSlice(index * GuestRam.RING_SPAN, GuestRam.RING_SPAN).fill((byte) 0);
                free.clear();
                for (int i = 0; i < N; i++) {
                    free.add(i);
                    inFlight[i] = false;
                }
                availIdx = 0;
                lastUsed = 0;
                availPos = 0;
                usedPos = 0;
                availWrap = true;
                usedWrap = true;
            }

            void offer(int id) {
                MemorySegment m = ram.seg();
                inFlight[id] = true;
                if (packed) {
                    // one descriptor per chain, its id the buffer's; the flags last, with release (VIRTIO 1.3, 2.8.6)
                    long d = at.descOff() + 16L * availPos;
                    m.set(LE64, d, ram.gpa(buf[id]));
                    m.set(LE32, d + 8, len[id]);
                    m.set(LE16, d + 12, (short) id);
                    INDEX.setRelease(m, d + 14, (short) ((rx ? PackedRing.F_WRITE : 0)
                            | (availWrap ? PackedRing.F_AVAIL : PackedRing.F_USED)));
                    if (++availPos == N) {
                        availPos = 0;
                        availWrap = !availWrap;
                    }
                    return;
                }
                long d = at.descOff() + 16L * id;
                m.set(LE64, d, ram.gpa(buf[id]));
                m.set(LE32, d + 8, len[id]);
                m.set(LE16, d + 12, (short) (rx ? DESC_F_WRITE : 0));
                m.set(LE16, d + 14, (short) 0);
                m.set(LE16, at.availOff() + AVAIL_RING + 2L * (availIdx % N), (short) id);
                availIdx = (availIdx + 1) & 0xffff;
                INDEX.setRelease(m, at.availOff() + AVAIL_IDX, (short) availIdx);
            }

            /** The next used entry as (id << 32 | length), the cursor moved past it; -1 if there is none. */
            long nextUsed() {
                MemorySegment m = ram.seg();
                if (packed) {
                    long d = at.descOff() + 16L * usedPos;
                    int f = Short.toUnsignedInt((short) INDEX.getAcquire(m, d + 14));
                    if (((f & PackedRing.F_AVAIL) != 0) != usedWrap || ((f & PackedRing.F_USED) != 0) != usedWrap) {
                        return -1;
                    }
                    if (++usedPos == N) {
                        usedPos = 0;
                        usedWrap = !usedWrap;
                    }
                    long id = Short.toUnsignedInt(m.get(LE16, d + 12));
                    return (id << 32) | Integer.toUnsignedLong(m.get(LE32, d + 8));
                }
                if (usedIdx() == lastUsed) {
                    return -1;
                }
                long e = at.usedOff() + USED_RING + 8L * (lastUsed % N);
                lastUsed = (lastUsed + 1) & 0xffff;
                return ((long) m.get(LE32, e) << 32) | Integer.toUnsignedLong(m.get(LE32, e + 4));
            }

            int usedIdx() {
                return Short.toUnsignedInt((short) INDEX.getAcquire(ram.seg(), at.usedOff() + USED_IDX));
            }

            int inFlightCount() {
                return N - free.size();
            }
        }

        /** Offers buffer {@code id} again: an RX buffer whole, a TX buffer with a new frame ({@link #writeTx}). */
        void post(GRing g, int id) {
            if (g.rx) {
                g.len[id] = BUF;
            } else {
                writeTx(g, id);
            }
            g.offer(id);
        }

        /** A TX frame in buffer {@code id}: a zero header, a tag naming this ring and the frame, bytes made from it. */
        void writeTx(GRing g, int id) {
            long tag = ((long) (g.index + 1) << 56) | ++nextTag;
            int len = VirtioNet.HDR_SIZE + 8 + gr.nextInt(MAX_FRAME - VirtioNet.HDR_SIZE - 8 + 1);
            byte[] f = new byte[len];
            MemorySegment.ofArray(f).set(LE64, VirtioNet.HDR_SIZE, tag);
            for (int k = VirtioNet.HDR_SIZE + 8; k < len; k++) {
                f[k] = pattern(tag, k);
            }
            MemorySegment.copy(MemorySegment.ofArray(f), 0, ram.seg(), g.buf[id], len);
            g.tag[id] = tag;
            g.len[id] = len;
            epochTags.put(tag, len);
        }

        /** Takes what the device used on {@code g}; while the frontend told the truth, checks each entry. */
        void reap(GRing g) {
            if (!packed) {
                int used = g.usedIdx();
                int n = (used - g.lastUsed) & 0xffff;
                if (!trusted && n > N) {
                    // anything may stand in this used ring (the device read a layout the guest did not write)
                    g.lastUsed = used;
                    return;
                }
                check(!trusted || n <= g.inFlightCount(), () -> "ring " + g.index + ": " + n + " used entries "
                        + "published, more than the " + g.inFlightCount() + " chains in flight");
            }
            for (int k = 0; k < 2 * N; k++) {
                long u = g.nextUsed();
                if (u < 0) {
                    return;
                }
                int id = (int) (u >>> 32);
                int len = (int) u;
                if (!trusted) {
                    // take back the chains it names, to keep traffic going, and nothing else
                    if (id >= 0 && id < N && g.inFlight[id]) {
                        g.inFlight[id] = false;
                        g.free.add(id);
                    }
                    continue;
                }
                check(id >= 0 && id < N && g.inFlight[id], () -> "ring " + g.index + ": a used entry names chain " + id
                        + ", which is not in flight (used twice, or never offered)");
                if (g.rx) {
                    checkRx(g, id, len);
                    rxSeen++;
                } else {
                    int sent = port.sentTags.getOrDefault(g.tag[id], 0);
                    check(sent <= 1, () -> "ring " + g.index + ": the port sent the frame of chain " + id + " " + sent
                            + " times");
                }
                g.inFlight[id] = false;
                g.free.add(id);
                checkedUsed++;
            }
        }

        private void checkRx(GRing g, int id, int len) {
            check(len >= VirtioNet.HDR_SIZE && len <= BUF, () -> "ring " + g.index + ": used length " + len
                    + " of RX chain " + id);
            byte[] b = new byte[len];
            MemorySegment.copy(ram.seg(), ValueLayout.JAVA_BYTE, g.buf[id], b, 0, len);
            boolean[] found = {false};
            port.handed.computeIfPresent(key(b.clone(), len), (k, v) -> {
                found[0] = true;
                return v == 1 ? null : v - 1;
            });
            check(found[0], () -> "ring " + g.index + ": RX chain " + id + " holds " + len + " bytes that are no "
                    + "frame the port handed out (or one delivered twice)");
            if (len < VirtioNet.HDR_SIZE + 8) {
                return;
            }
            long tag = MemorySegment.ofArray(b).get(LE64, VirtioNet.HDR_SIZE);
            Integer sentLen = epochTags.get(tag);
            if (sentLen == null) {
                return; // a frame from before the restore, or one the device made of what a lie showed it
            }
            check((int) (tag >>> 56) - 1 == g.index + 1, () -> "ring " + g.index + ": frame " + Long.toHexString(tag)
                    + " of another pair's TX ring came back here");
            check(len == sentLen, () -> "ring " + g.index + ": looped frame " + Long.toHexString(tag) + " is " + len
                    + " bytes, sent as " + sentLen);
            for (int k = VirtioNet.HDR_SIZE + 8; k < len; k++) {
                if (b[k] != pattern(tag, k)) {
                    throw new AssertionError("ring " + g.index + ": looped frame " + Long.toHexString(tag)
                            + " differs at byte " + k + "; " + where());
                }
            }
            check(delivered.add(tag), () -> "ring " + g.index + ": frame " + Long.toHexString(tag)
                    + " delivered a second time");
        }

        /** One round of the guest: reap every ring, post every free RX buffer and a few TX frames, kick every ring. */
        void round() {
            if (trusted) {
                long e = errors();
                check(e == errorsAtTrust, () -> "a ring broke (queue errors " + errorsAtTrust + " -> " + e
                        + ") while the frontend told the truth");
            }
            for (GRing g : rings) {
                reap(g);
            }
            for (GRing g : rings) {
                int posts = g.rx ? N : gr.nextInt(9);
                for (int k = 0; k < posts && !g.free.isEmpty(); k++) {
                    post(g, g.free.poll());
                }
            }
            for (GRing g : rings) {
                g.kick.signal();
            }
        }

        void startGuest() {
            stopGuest = false;
            guest = Thread.ofPlatform().name("ctl-guest-" + seed).start(() -> {
                try {
                    while (!stopGuest) {
                        lock.lock();
                        try {
                            round();
                        } finally {
                            lock.unlock();
                        }
                        LockSupport.parkNanos(50_000 + gr.nextInt(250_000));
                    }
                } catch (Throwable t) {
                    guestFailure = t;
                }
            });
        }

        void stopGuest() throws InterruptedException {
            stopGuest = true;
            guest.join(10_000);
            assertThat(guest.isAlive()).as("the guest thread stopped").isFalse();
            rethrowGuest();
        }

        void rethrowGuest() {
            Throwable t = guestFailure;
            if (t instanceof AssertionError a) {
                throw a;
            }
            if (t != null) {
                throw new AssertionError("the guest thread failed; " + where(), t);
            }
        }

        // ---- the frontend ----

        /** The answer to a request sent with NEED_REPLY, within the bound; the connection must stay. */
        RawPeer.Reply answer(Request req) {
            long t = System.nanoTime();
            RawPeer.Reply rep;
            try {
                rep = fe.read(REPLY_MS);
            } catch (RawPeer.Closed c) {
                throw new AssertionError(req + " closed the connection (" + c.getMessage() + "); " + where());
            } catch (AssertionError e) {
                throw new AssertionError("no answer to " + req + " within " + REPLY_MS + " ms; " + where(), e);
            }
            maxReplyNanos = Math.max(maxReplyNanos, System.nanoTime() - t);
            requests++;
            assertThat(rep.request()).as("the answer's request; %s", where()).isEqualTo(req.id);
            assertThat(rep.flags()).as("the answer's flags; %s", where()).isEqualTo(RawPeer.V1 | RawPeer.REPLY);
            return rep;
        }

        /** Sends with NEED_REPLY; returns the ack (0: done). */
        long ack(Request req, byte[] payload, int... fds) {
            fe.sendAcked(req, payload, fds);
            return answer(req).u64();
        }

        void ok(Request req, byte[] payload, int... fds) {
            assertThat(ack(req, payload, fds)).as("the ack of %s; %s", req, where()).isZero();
        }

        /** A request with a reply of its own that may be refused by closing the connection: its reply, or null. */
        RawPeer.Reply replyOrClose(Request req, byte[] payload, int... fds) {
            fe.sendAcked(req, payload, fds);
            RawPeer.Reply rep;
            try {
                rep = fe.read(REPLY_MS);
            } catch (RawPeer.Closed c) {
                note("(closed)");
                lock.lock();
                try {
                    reconnect();
                } finally {
                    lock.unlock();
                }
                return null;
            }
            requests++;
            assertThat(rep.request()).as("the answer's request; %s", where()).isEqualTo(req.id);
            return rep;
        }

        /**
         * A request that, if done, may leave the session describing something other than the guest's rings and memory:
         * sent while the guest holds still, and from then on nothing is checked until the next restore.
         */
        long risky(boolean untrustEvenIfRefused, LongSupplier send) {
            lock.lock();
            try {
                long a = send.getAsLong();
                if (a == 0 || untrustEvenIfRefused) {
                    if (trusted) {
                        untrusts++;
                    }
                    trusted = false;
                }
                return a;
            } finally {
                lock.unlock();
            }
        }

        /** A new connection set up as QEMU sets one up (the guest held still: lock held). */
        void reconnect() {
            if (fe != null) {
                fe.close();
            }
            reconnects++;
            fe = RawPeer.connect(server.path());
            long f = fe.get(Request.GET_FEATURES);
            long pf = fe.get(Request.GET_PROTOCOL_FEATURES);
            if (offered == 0) {
                offered = f;
                offeredPf = pf;
            }
            assertThat(f).as("GET_FEATURES on a new connection").isEqualTo(offered);
            assertThat(f & canon).isEqualTo(canon);
            assertThat(pf & PF).isEqualTo(PF);
            fe.send(Request.SET_PROTOCOL_FEATURES, u64(PF));
            fe.send(Request.SET_OWNER, new byte[0]);
            ok(Request.SET_FEATURES, u64(canon));
            ok(Request.SET_MEM_TABLE, ram.memTable(), ram.fd());
            status = 0;
            logGiven = false;
            setUpRings();
        }

        /** Back to QEMU's set-up on this connection: every ring stopped, features, memory table, rings anew. */
        void restore() {
            for (int i = 0; i < RINGS; i++) {
                fe.send(Request.GET_VRING_BASE, state(i, 0));
                assertThat(answer(Request.GET_VRING_BASE).u32(0)).as("GET_VRING_BASE's ring; %s", where()).isEqualTo(i);
            }
            ok(Request.SET_FEATURES, u64(canon));
            ok(Request.SET_MEM_TABLE, ram.memTable(), ram.fd());
            setUpRings();
            restores++;
        }

        private void setUpRings() {
            for (GRing g : rings) {
                g.reset();
            }
            epochTags.clear();
            delivered.clear();
            for (GRing g : rings) {
                int i = g.index;
                ok(Request.SET_VRING_NUM, state(i, N));
                ok(Request.SET_VRING_BASE, state(i, packed ? RingBase.PACKED_START.encode(true) : 0));
                ok(Request.SET_VRING_ADDR, ram.vringAddr(g.at));
                ok(Request.SET_VRING_CALL, u64(i), g.call.fd());
                ok(Request.SET_VRING_ERR, u64(i), g.err.fd());
                ok(Request.SET_VRING_KICK, u64(i), g.kick.fd());
                ok(Request.SET_VRING_ENABLE, state(i, 1));
            }
            trusted = true;
            featuresOk = true;
            Arrays.fill(stopped, false);
            Arrays.fill(baseKnown, false);
            errorsAtTrust = errors(); // every ring was stopped since the last lie: its breaks are counted by now
        }

        /** The errors of every queue: a ring broken, a frame the port refused, a TX frame shorter than its header. */
        long errors() {
            long e = 0;
            for (QueueCounters.Snapshot c : dev.counters()) {
                e += c.errors();
            }
            return e;
        }

        // ---- the random requests ----

        /** A kick, call or error descriptor for ring {@code i}: payload bits, the fd to send (or -1), one to close. */
        record FdChoice(long bits, int fd, EventFd closeAfter, String what) {}

        int fdOf(GRing g, int kind) {
            return kind == 0 ? g.kick.fd() : kind == 1 ? g.call.fd() : g.err.fd();
        }

        FdChoice fdFor(int i, int kind) {
            GRing own = rings[i];
            GRing other = rings[(i + 1 + r.nextInt(RINGS - 1)) % RINGS];
            return switch (r.nextInt(7)) {
                case 0, 1, 2 -> new FdChoice(i, fdOf(own, kind), null, "own");
                case 3 -> new FdChoice(i, fdOf(other, kind), null, "ring " + other.index + "'s");
                case 4 -> {
                    EventFd e = EventFd.create();
                    yield new FdChoice(i, e.fd(), e, "closed after sending");
                }
                case 5 -> new FdChoice(i, notAnEventFd.fd(), null, "a memfd");
                default -> new FdChoice(i | Protocol.VRING_NOFD, -1, null, "none");
            };
        }

        long sendFd(Request req, FdChoice c) {
            try {
                return c.fd() < 0 ? ack(req, u64(c.bits())) : ack(req, u64(c.bits()), c.fd());
            } finally {
                if (c.closeAfter() != null) {
                    c.closeAfter().close();
                }
            }
        }

        void step() {
            int i = r.nextInt(RINGS);
            GRing g = rings[i];
            int a = r.nextInt(100);
            if (a < 8) {
                note("GET_VRING_BASE " + i);
                fe.send(Request.GET_VRING_BASE, state(i, 0));
                RawPeer.Reply rep = answer(Request.GET_VRING_BASE);
                assertThat(rep.u32(0)).as("GET_VRING_BASE's ring; %s", where()).isEqualTo(i);
                stoppedAt[i] = rep.u32(4);
                stopped[i] = true;
                baseKnown[i] = true;
            } else if (a < 18) {
                // QEMU's restart of a stopped ring (one this test stopped, if any), at the base it was given or another
                for (int k = 0; k < RINGS; k++) {
                    if (stopped[(i + k) % RINGS]) {
                        restart((i + k) % RINGS);
                        return;
                    }
                }
                restart(i);
            } else if (a < 23) {
                int base = switch (r.nextInt(4)) {
                    case 0 -> 0;
                    case 1 -> stoppedAt[i];
                    case 2 -> r.nextInt(0x10000);
                    default -> 0x10000 + r.nextInt(1000);
                };
                note("SET_VRING_BASE " + i + " " + base);
                if (packed && !(baseKnown[i] && base == stoppedAt[i])) {
                    // a packed ring resumes where its base says (and its flags agree): another base is a lie
                    risky(false, () -> ack(Request.SET_VRING_BASE, state(i, base)));
                } else {
                    // a split ring resumes at its used index whatever the base
                    ack(Request.SET_VRING_BASE, state(i, base));
                }
            } else if (a < 28) {
                int[] sizes = {N, N, 32, 128, 256, 0, 3, 65536};
                int num = sizes[r.nextInt(sizes.length)];
                note("SET_VRING_NUM " + i + " " + num);
                if (num == N) {
                    ack(Request.SET_VRING_NUM, state(i, num));
                } else {
                    risky(false, () -> ack(Request.SET_VRING_NUM, state(i, num)));
                }
            } else if (a < 34) {
                setAddr(g);
            } else if (a < 40) {
                FdChoice c = fdFor(i, 0);
                note("SET_VRING_KICK " + i + " " + c.what());
                long k = featuresOk ? sendFd(Request.SET_VRING_KICK, c)
                        : risky(false, () -> sendFd(Request.SET_VRING_KICK, c));
                if (k == 0) {
                    baseKnown[i] = false; // it runs
                    stopped[i] = false;
                }
            } else if (a < 46) {
                int kind = 1 + r.nextInt(2);
                FdChoice c = fdFor(i, kind);
                note((kind == 1 ? "SET_VRING_CALL " : "SET_VRING_ERR ") + i + " " + c.what());
                sendFd(kind == 1 ? Request.SET_VRING_CALL : Request.SET_VRING_ERR, c);
            } else if (a < 54) {
                int on = r.nextInt(10) == 0 ? 2 : r.nextInt(2);
                int index = r.nextInt(20) == 0 ? RINGS + r.nextInt(200) : i;
                note("SET_VRING_ENABLE " + index + " " + on);
                long ack = ack(Request.SET_VRING_ENABLE, state(index, on));
                if (on == 2 || index >= RINGS) {
                    assertThat(ack).as("the ack of SET_VRING_ENABLE %d %d; %s", index, on, where()).isNotZero();
                }
            } else if (a < 60) {
                memTable();
            } else if (a < 65) {
                memRegion();
            } else if (a < 71) {
                features();
            } else if (a < 74) {
                logBase();
            } else if (a < 77) {
                Request reset = Request.RESET_OWNER; // RESET_DEVICE is not offered
                note(reset.toString());
                ok(reset, new byte[0]);
                featuresOk = false;
                status = 0;
                Arrays.fill(stopped, true);
                Arrays.fill(baseKnown, false); // each stopped where it stood: GET_VRING_BASE says where
                if (r.nextBoolean()) {
                    ok(Request.SET_FEATURES, u64(canon)); // as QEMU goes on after a reset
                    featuresOk = true;
                }
            } else if (a < 82) {
                status();
            } else if (a < 84) {
                if (r.nextBoolean()) {
                    note("GET_CONFIG");
                    replyOrClose(Request.GET_CONFIG, config());
                } else {
                    note("SET_CONFIG");
                    assertThat(ack(Request.SET_CONFIG, config())).as("SET_CONFIG, not offered; %s", where())
                            .isNotZero();
                }
            } else if (a < 88) {
                gets();
            } else if (a < 89) {
                note("GET_VRING_BASE beyond the rings");
                RawPeer.Reply rep = replyOrClose(Request.GET_VRING_BASE, state(RINGS + r.nextInt(250), 0));
                assertThat(rep).as("GET_VRING_BASE of a ring the device lacks answered; %s", where()).isNull();
            } else if (a < 91) {
                note("reconnect");
                lock.lock();
                try {
                    reconnect();
                } finally {
                    lock.unlock();
                }
            } else if (!trusted || r.nextInt(4) == 0) {
                note("restore");
                lock.lock();
                try {
                    restore();
                } finally {
                    lock.unlock();
                }
            } else {
                LockSupport.parkNanos(r.nextInt(500_000)); // traffic alone
            }
        }

        void restart(int i) {
            if (packed && !baseKnown[i]) {
                fe.send(Request.GET_VRING_BASE, state(i, 0)); // as QEMU does before it restarts a ring
                stoppedAt[i] = answer(Request.GET_VRING_BASE).u32(4);
                baseKnown[i] = true;
            }
            int base = switch (r.nextInt(4)) {
                case 0 -> r.nextInt(0x10000);
                case 1 -> (stoppedAt[i] + r.nextInt(2 * N) - N) & 0xffff; // a little before or after where it stood
                default -> stoppedAt[i];
            };
            note("restart " + i + " at " + base + " (stopped at " + stoppedAt[i] + ")");
            if (packed && base != stoppedAt[i]) {
                risky(false, () -> ack(Request.SET_VRING_BASE, state(i, base)));
            } else {
                ack(Request.SET_VRING_BASE, state(i, base));
            }
            GRing g = rings[i];
            long k = featuresOk ? ack(Request.SET_VRING_KICK, u64(i), g.kick.fd())
                    : risky(false, () -> ack(Request.SET_VRING_KICK, u64(i), g.kick.fd()));
            if (k == 0) {
                stopped[i] = false;
                baseKnown[i] = false;
                ok(Request.SET_VRING_ENABLE, state(i, 1));
            }
        }

        void setAddr(GRing g) {
            int i = g.index;
            GuestRam.RingAt other = rings[(i + 1) % RINGS].at;
            int c = r.nextInt(7);
            byte[] p = switch (c) {
                case 0, 1 -> ram.vringAddr(g.at);
                case 2 -> RawPeer.vringAddr(i, Protocol.VRING_F_LOG, ram.uva(g.at.descOff()), ram.uva(g.at.usedOff()),
                        ram.uva(g.at.availOff()), ram.gpa(g.at.usedOff()));
                case 3 -> ram.vringAddr(new GuestRam.RingAt(i, N, other.descOff(), other.availOff(), other.usedOff()));
                case 4 -> ram.vringAddr(new GuestRam.RingAt(i, N, g.buf[0], g.buf[1], g.buf[2]));
                case 5 -> RawPeer.vringAddr(i, 0, ram.uva(g.at.descOff()) + 1, ram.uva(g.at.usedOff()) + 2,
                        ram.uva(g.at.availOff()) + 1, 0);
                default -> RawPeer.vringAddr(i, 0, ram.uva(0) + GuestRam.SIZE, ram.uva(0) + GuestRam.SIZE + 8192,
                        ram.uva(0) + GuestRam.SIZE + 4096, 0);
            };
            note("SET_VRING_ADDR " + i + " choice " + c);
            if (c <= 2) {
                ack(Request.SET_VRING_ADDR, p);
            } else {
                risky(false, () -> ack(Request.SET_VRING_ADDR, p));
            }
        }

        void memTable() {
            Arrays.fill(baseKnown, false); // rings that ran or were parked restart
            RawPeer.Region main = ram.region();
            RawPeer.Region ex = new RawPeer.Region(EXTRA_GPA, EXTRA_BYTES, EXTRA_UVA, 0);
            int c = r.nextInt(5);
            note("SET_MEM_TABLE choice " + c);
            switch (c) {
                case 0 -> tableOf(false, main);
                case 1 -> tableOf(false, main, ex);
                case 2 -> tableOf(true, new RawPeer.Region(main.gpa() + 4096L * (1 + r.nextInt(16)), main.size(),
                        main.uva(), 0));
                case 3 -> tableOf(true, new RawPeer.Region(main.gpa(), RINGS * GuestRam.RING_SPAN, main.uva(), 0));
                default -> tableOf(true, new RawPeer.Region(main.gpa(), 2 * GuestRam.RING_SPAN, main.uva(), 0));
            }
        }

        /** A SET_MEM_TABLE of the main memfd (and the extra one second); {@code lie}: not the guest's memory. */
        void tableOf(boolean lie, RawPeer.Region... rows) {
            int[] fds = rows.length == 1 ? new int[] {ram.fd()} : new int[] {ram.fd(), extra.fd()};
            if (lie || !featuresOk) {
                // installed even when answered with a failure (a ring it does not hold is parked)
                risky(true, () -> ack(Request.SET_MEM_TABLE, RawPeer.memTable(rows), fds));
            } else {
                ack(Request.SET_MEM_TABLE, RawPeer.memTable(rows), fds);
            }
        }

        void memRegion() {
            Arrays.fill(baseKnown, false);
            RawPeer.Region main = ram.region();
            RawPeer.Region ex = new RawPeer.Region(EXTRA_GPA, EXTRA_BYTES, EXTRA_UVA, 0);
            int c = r.nextInt(6);
            note("ADD/REM_MEM_REG choice " + c);
            LongSupplier send = switch (c) {
                case 0 -> () -> ack(Request.ADD_MEM_REG, RawPeer.memReg(ex), extra.fd());
                case 1 -> () -> ack(Request.REM_MEM_REG, RawPeer.memReg(ex));
                case 2 -> () -> ack(Request.REM_MEM_REG, RawPeer.memReg(main), ram.fd());
                case 3 -> () -> ack(Request.ADD_MEM_REG, RawPeer.memReg(main), ram.fd());
                case 4 -> () -> ack(Request.REM_MEM_REG, RawPeer.memReg(new RawPeer.Region(0x1000, 4096, 0x1000, 0)));
                default -> () -> ack(Request.ADD_MEM_REG, RawPeer.memReg(new RawPeer.Region(main.gpa() + 0x10_0000,
                        main.size(), main.uva(), 0)), ram.fd());
            };
            if (c == 5 || !featuresOk) {
                risky(false, send); // memory moved, or parked rings restarting under features the guest does not use
            } else {
                send.getAsLong();
            }
        }

        void features() {
            long f = switch (r.nextInt(7)) {
                case 0 -> canon | (logGiven && r.nextBoolean() ? LOG_ALL : 0);
                case 1 -> canon ^ VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX);
                case 2 -> canon ^ VirtioFeatures.bit(VirtioNet.F_MRG_RXBUF);
                case 3 -> canon ^ PACKED;
                case 4 -> canon | IN_ORDER;
                case 5 -> canon & ~VERSION_1;
                default -> canon | (1L << 63);
            };
            note("SET_FEATURES 0x" + Long.toHexString(f));
            boolean fits = (f & PACKED) == (canon & PACKED) && (f & IN_ORDER) == 0 && (f & VERSION_1) != 0
                    && (f & ~offered) == 0;
            if (fits) {
                if (ack(Request.SET_FEATURES, u64(f)) == 0) {
                    featuresOk = true;
                }
            } else {
                lock.lock();
                try {
                    long a = ack(Request.SET_FEATURES, u64(f));
                    if ((f & ~offered) != 0) {
                        assertThat(a).as("SET_FEATURES with a bit not offered; %s", where()).isNotZero();
                    }
                    if (a == 0) {
                        featuresOk = false; // no ring runs now (else refused); one that starts then ends the truth
                    }
                } finally {
                    lock.unlock();
                }
            }
        }

        void logBase() {
            int c = r.nextInt(4);
            note("SET_LOG_BASE choice " + c);
            if (c < 2) {
                fe.sendAcked(Request.SET_LOG_BASE, RawPeer.logBase(LOG_BYTES, 0), log.fd());
                answer(Request.SET_LOG_BASE);
                logGiven = true;
            } else {
                // past the file's end, or not in 64-bit words, or not a file: whatever the memory table holds then
                RawPeer.Reply rep = switch (r.nextInt(3)) {
                    case 0 -> replyOrClose(Request.SET_LOG_BASE, RawPeer.logBase(LOG_BYTES, 4 * LOG_BYTES), log.fd());
                    case 1 -> replyOrClose(Request.SET_LOG_BASE, RawPeer.logBase(LOG_BYTES - 4, 0), log.fd());
                    default -> replyOrClose(Request.SET_LOG_BASE, RawPeer.logBase(LOG_BYTES, 0), rings[0].call.fd());
                };
                assertThat(rep).as("a bad log answered; %s", where()).isNull();
            }
        }

        void status() {
            int c = r.nextInt(3);
            if (c == 0) {
                int v = r.nextInt(256);
                note("SET_STATUS " + v);
                ok(Request.SET_STATUS, u64(v));
                status = v;
            } else if (c == 1) {
                note("SET_STATUS beyond a byte");
                assertThat(ack(Request.SET_STATUS, u64(0x100 + r.nextInt(1000)))).as("SET_STATUS 0x1xx; %s", where())
                        .isNotZero();
            } else {
                note("GET_STATUS");
                fe.send(Request.GET_STATUS, new byte[0]);
                assertThat(answer(Request.GET_STATUS).u64()).as("GET_STATUS; %s", where()).isEqualTo(status);
            }
        }

        byte[] config() {
            int size = r.nextInt(16);
            byte[] p = new byte[12 + size];
            MemorySegment.ofArray(p).set(LE32, 4, size);
            return p;
        }

        void gets() {
            note("GETs");
            fe.send(Request.GET_FEATURES, new byte[0]);
            assertThat(answer(Request.GET_FEATURES).u64()).as("GET_FEATURES; %s", where()).isEqualTo(offered);
            fe.send(Request.GET_PROTOCOL_FEATURES, new byte[0]);
            assertThat(answer(Request.GET_PROTOCOL_FEATURES).u64()).as("GET_PROTOCOL_FEATURES; %s", where())
                    .isEqualTo(offeredPf);
            fe.send(Request.GET_QUEUE_NUM, new byte[0]);
            assertThat(answer(Request.GET_QUEUE_NUM).u64()).as("GET_QUEUE_NUM; %s", where()).isEqualTo(PAIRS);
            fe.send(Request.GET_MAX_MEM_SLOTS, new byte[0]);
            assertThat(answer(Request.GET_MAX_MEM_SLOTS).u64()).as("GET_MAX_MEM_SLOTS; %s", where())
                    .isEqualTo(Protocol.MAX_MEM_SLOTS);
        }

        // ---- the checks between steps ----

        void alive() {
            assertThat(dev.deadReason()).as("the device's death; %s", where()).isNull();
            rethrowGuest();
        }

        /**
         * With the guest still (lock held) and nothing asked: each ring's worker answers a command at once (a
         * SET_VRING_CALL of a running ring goes to it), then spends under 30 ms of CPU in 100 ms.
         */
        void idle(String when) throws InterruptedException {
            lock.lock();
            try {
                for (GRing g : rings) {
                    long t = System.nanoTime();
                    ok(Request.SET_VRING_CALL, u64(g.index), g.call.fd());
                    assertThat((System.nanoTime() - t) / 1_000_000).as("ms to answer SET_VRING_CALL %d %s; %s", g.index,
                            when, where()).isLessThan(1000);
                }
                Thread.sleep(40);
                long[] before = dev.workerCpuNanos();
                Thread.sleep(100);
                long[] after = dev.workerCpuNanos();
                for (int p = 0; p < PAIRS; p++) {
                    long ms = (after[p] - before[p]) / 1_000_000;
                    if (ms >= 30) {
                        // A spin goes on; a worker still busy with what came before does not: 300 ms more must show it.
                        // (Seen once in soaks, not reproduced: see docs/fuzzing.md.)
                        long b = dev.workerCpuNanos()[p];
                        Thread.sleep(300);
                        long more = (dev.workerCpuNanos()[p] - b) / 1_000_000;
                        System.out.printf("control: pair %d's worker spent %d ms of CPU in the first 100 ms with "
                                + "nothing asked (%s), then %d ms in 300 ms; %s%n", p, ms, when, more, where());
                        assertThat(more).as("pair %d's worker CPU in 300 ms with nothing asked, after %d ms in the "
                                + "first 100 ms (%s), ms; %s", p, ms, when, where()).isLessThan(90);
                    }
                }
                alive();
            } finally {
                lock.unlock();
            }
        }

        /**
         * After whatever came before, QEMU's set-up on the same connection (after a reset, or a stop of every ring as
         * at a migration's switch-over) gives a device that works: 32 frames per pair go round the loop, each exactly
         * once and whole, and the counters move by exactly what the guest saw. After a reset nothing of the past
         * arrives; without one, frames the port still held are taken first (and checked as any RX frame). Then the
         * idle check. The guest thread holds still meanwhile.
         */
        void loopCheck(String when, boolean reset) throws InterruptedException {
            lock.lock();
            try {
                Request how = Request.RESET_OWNER; // RESET_DEVICE is not offered
                note((reset ? how + " and restore" : "restore") + ": the loop check " + when);
                if (reset) {
                    ok(how, new byte[0]);
                    status = 0;
                }
                restore();
                final int frames = 32;
                if (!reset) {
                    drainRx(when);
                }
                List<QueueCounters.Snapshot> c0 = dev.counters();
                long rxBefore = rxSeen;
                for (GRing g : rings) {
                    int posts = g.rx ? g.free.size() : frames;
                    for (int k = 0; k < posts; k++) {
                        post(g, g.free.poll());
                    }
                    g.kick.signal();
                }
                long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
                while (delivered.size() < PAIRS * frames || rings[1].inFlightCount() + rings[3].inFlightCount() > 0) {
                    check(System.nanoTime() < deadline, () -> "frames round the loop " + when + ": " + delivered.size()
                            + " of " + PAIRS * frames + " back within 10 s, TX chains in flight "
                            + rings[1].inFlightCount() + ", " + rings[3].inFlightCount());
                    for (GRing g : rings) {
                        reap(g);
                    }
                    Thread.sleep(1);
                }
                assertThat(delivered).as("every frame back once %s; %s", when, where()).isEqualTo(epochTags.keySet());
                assertThat(rxSeen - rxBefore).as("RX frames %s (one from before?); %s", when, where())
                        .isEqualTo(PAIRS * frames);
                // the counters are added when a burst ends, after its used entries are published
                List<QueueCounters.Snapshot> c1 = dev.counters();
                while (!settled(c0, c1, frames) && System.nanoTime() < deadline) {
                    Thread.sleep(1);
                    c1 = dev.counters();
                }
                for (int q = 0; q < RINGS; q++) {
                    QueueCounters.Snapshot a = c0.get(q), b = c1.get(q);
                    assertThat(b.packets() - a.packets()).as("queue %d's packets %s; %s", q, when, where())
                            .isEqualTo(frames);
                    assertThat(b.drops() - a.drops()).as("queue %d's drops %s; %s", q, when, where()).isZero();
                    assertThat(b.errors() - a.errors()).as("queue %d's errors %s; %s", q, when, where()).isZero();
                }
                idle(when);
            } finally {
                lock.unlock();
            }
        }

        /** RX buffers posted and taken until no frame has come for 30 ms: what the port held for the guest. */
        private void drainRx(String when) throws InterruptedException {
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(5);
            long quietSince = System.nanoTime();
            long seen = rxSeen;
            while (System.nanoTime() - quietSince < 30_000_000L) {
                check(System.nanoTime() < deadline, () -> "frames the port held still coming after 5 s " + when);
                for (GRing g : rings) {
                    if (g.rx) {
                        reap(g);
                        while (!g.free.isEmpty()) {
                            int id = g.free.poll();
                            g.len[id] = BUF;
                            g.offer(id);
                        }
                        g.kick.signal();
                    }
                }
                if (rxSeen != seen) {
                    seen = rxSeen;
                    quietSince = System.nanoTime();
                }
                Thread.sleep(1);
            }
        }

        private static boolean settled(List<QueueCounters.Snapshot> c0, List<QueueCounters.Snapshot> c1, int frames) {
            for (int q = 0; q < RINGS; q++) {
                if (c1.get(q).packets() - c0.get(q).packets() < frames) {
                    return false;
                }
            }
            return true;
        }

        /** The end: the loop check, the session ends and nothing of it stays; the counters over the device's life. */
        void finish(Leaks baseline) throws InterruptedException {
            stopGuest();
            loopCheck("at the end", true);
            fe.close();
            fe = null;
            BackendHarness.awaitNoSession(server);
            long tx = 0, rx = 0;
            for (int q = 0; q < RINGS; q++) {
                if (VirtioNet.isRx(q)) {
                    rx += dev.counters().get(q).packets();
                } else {
                    tx += dev.counters().get(q).packets();
                }
            }
            assertThat(tx).as("TX packets counted against frames the port was handed; %s", where())
                    .isEqualTo(port.sends.get());
            assertThat(rx).as("RX packets counted against frames the port handed out; %s", where())
                    .isLessThanOrEqualTo(port.handedOut.get());
            Leaks after = Leaks.settleTo(baseline, 5000);
            assertThat(after.fds()).as("descriptors after the session:%n%s%nbefore:%n%s%n%s", after.describe(),
                    baseline.describe(), where()).isEqualTo(baseline.fds());
            assertThat(after.memfdMaps()).as("memfd mappings after the session:%n%s%nbefore:%n%s%n%s", after.describe(),
                    baseline.describe(), where()).isEqualTo(baseline.memfdMaps());
        }

        void run() throws InterruptedException {
            Leaks baseline = Leaks.now();
            lock.lock();
            try {
                reconnect();
            } finally {
                lock.unlock();
            }
            startGuest();
            try {
                for (step = 0; step < STEPS; step++) {
                    step();
                    alive();
                    if (step % 100 == 99) {
                        loopCheck("after step " + step, r.nextBoolean());
                    } else if (r.nextInt(100) == 0) {
                        idle("after step " + step);
                    }
                }
            } finally {
                stopGuest = true;
            }
            finish(baseline);
        }

        @Override
        public void close() {
            stopGuest = true;
            if (guest != null) {
                try {
                    guest.join(5000);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            }
            if (fe != null) {
                fe.close();
            }
            server.close();
            dev.close();
            for (GRing g : rings) {
                g.kick.close();
                g.call.close();
                g.err.close();
            }
            ram.close();
            extra.close();
            log.close();
            notAnEventFd.close();
        }
    }

    static byte pattern(long tag, int k) {
        return (byte) (tag * 31 + k * 7);
    }

    @Test
    void randomControlRequestsWhileTrafficFlows() throws Exception {
        String only = System.getProperty("control.seed");
        long base = 0xc0_7701_0000L;
        long deadline = System.nanoTime() + BUDGET_NANOS;
        // at least one split and one packed seed, then more until the budget is spent
        for (int i = 0; i == 0 || (only == null && (i < 2 || System.nanoTime() < deadline)); i++) {
            long seed = only != null ? Long.parseLong(only) : base + i;
            long t = System.nanoTime();
            try (Run run = new Run(seed)) {
                run.run();
                System.out.printf("control seed %d (%s): %d ms, %d requests answered (slowest %d ms), %d untrusting, "
                        + "%d restores, %d connections, %d used entries checked%n", seed,
                        run.packed ? "packed" : "split", (System.nanoTime() - t) / 1_000_000, run.requests,
                        run.maxReplyNanos / 1_000_000, run.untrusts, run.restores, run.reconnects, run.checkedUsed);
            } catch (AssertionError | RuntimeException e) {
                throw new AssertionError("seed " + seed + " (-Dcontrol.seed=" + seed + "): " + e.getMessage(), e);
            }
        }
    }
}
