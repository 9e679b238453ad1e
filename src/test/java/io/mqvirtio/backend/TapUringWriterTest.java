package io.mqvirtio.backend;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import io.mqvirtio.linux.ErrnoException;
import io.mqvirtio.linux.Fd;
import io.mqvirtio.linux.HostTap;
import io.mqvirtio.linux.IoUring;
import io.mqvirtio.linux.IoVec;
import io.mqvirtio.linux.PacketSocket;
import io.mqvirtio.linux.Tap;
import io.mqvirtio.linux.TestNetns;
import io.mqvirtio.net.Port;
import io.mqvirtio.net.VirtioNet;
import io.mqvirtio.virtio.Experiment;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ThreadLocalRandom;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * TX into a real TAP through io_uring ({@link TapUringWriter} behind a {@link TapBackend} port), in a namespace of
 * the test's own: a batch goes out whole and in order (a packet socket on the TAP sees what the kernel received),
 * the TAP's refusals come back per frame and leave io_uring in use, frames that do not fit a slot are left to
 * writev, and the choice of method (asked, refused by the experiment switch, io_uring disabled on the host) is what
 * the port says it uses. Skipped unless root with /dev/net/tun and io_uring.
 */
@Timeout(60)
class TapUringWriterTest {
    private static final int ETHERTYPE = 0x88b5; // IEEE local experimental: the kernel passes it to packet taps, then drops it
    private static final ValueLayout.OfShort BE16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.BIG_ENDIAN);
    private static final ValueLayout.OfInt BE32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.BIG_ENDIAN);

    private TestNetns ns;
    private String dev;
    private TapBackend backend;
    private final Arena arena = Arena.ofShared();

    @BeforeEach
    void setUp() throws Exception {
        assumeTrue(Files.exists(Path.of("/dev/net/tun")) && TestNetns.isRoot(), "needs root and /dev/net/tun");
        assumeTrue(IoUring.unavailable() == null, "io_uring: " + IoUring.unavailable());
        ns = TestNetns.create();
        ns.exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1");
        dev = "mqvu" + Integer.toHexString(ThreadLocalRandom.current().nextInt(1 << 24));
    }

    @AfterEach
    void tearDown() throws Exception {
        Experiment.TAP_WRITEV.reset();
        Experiment.TAP_URING_LINKED.reset();
        if (backend != null) {
            backend.close();
        }
        if (ns != null) {
            ns.close();
        }
        arena.close();
    }

    private Port open(TapBackend.TxMethod how) throws Exception {
        backend = ns.inside(() -> TapBackend.open(dev, 2, how));
        ns.ip("link", "set", "dev", dev, "up");
        Port p = backend.open(0);
        p.setActive(true);
        return p;
    }

    /** Header (zero: no offload) and frame as two iovec entries, as a guest's chain may split them. */
    private IoVec frame(int seq, int len) {
        MemorySegment hdr = arena.allocate(VirtioNet.HDR_SIZE);
        MemorySegment f = arena.allocate(len);
        if (len >= 18) { // shorter: a runt of zeros
            f.asSlice(0, 6).fill((byte) 0xff); // broadcast: the TAP takes it as its own
            f.set(ValueLayout.JAVA_BYTE, 6, (byte) 0x02);
            f.set(ValueLayout.JAVA_BYTE, 11, (byte) 0x33);
            f.set(BE16, 12, (short) ETHERTYPE);
            f.set(BE32, 14, seq);
            for (int i = 18; i < len; i++) {
                f.set(ValueLayout.JAVA_BYTE, i, (byte) (seq + i));
            }
        }
        IoVec v = new IoVec(2);
        v.add(hdr);
        v.add(f);
        return v;
    }

    /** The next {@code n} frames of ours the TAP received, as the packet socket saw them. */
    private static List<byte[]> received(PacketSocket s, int n) {
        List<byte[]> got = new ArrayList<>();
        try (Arena a = Arena.ofConfined()) {
            MemorySegment buf = a.allocate(4096);
            long deadline = System.nanoTime() + 5_000_000_000L;
            while (got.size() < n && System.nanoTime() < deadline) {
                if (s.poll(Fd.POLLIN, 200) == 0) {
                    continue;
                }
                long len = s.read(buf);
                if (len >= 18 && Short.toUnsignedInt(buf.get(BE16, 12)) == ETHERTYPE) {
                    got.add(buf.asSlice(0, len).toArray(ValueLayout.JAVA_BYTE));
                }
            }
        }
        return got;
    }

    @Test
    void aBatchGoesOutWholeAndInOrder() throws Exception {
        Port p = open(TapBackend.TxMethod.IO_URING);
        assertThat(p.ioMethod(false)).isEqualTo("io_uring");
        assertThat(p.ioMethod(true)).isEqualTo("readv");
        assertThat(p.batch()).isEqualTo(TapUringWriter.SLOTS);
        assertThat(backend.describe()).contains("TX through io_uring");
        try (PacketSocket s = ns.inside(() -> PacketSocket.open(dev))) {
            List<IoVec> frames = new ArrayList<>();
            for (int i = 0; i < TapUringWriter.SLOTS; i++) {
                frames.add(frame(i, 60 + i * 47)); // 60 to 1517 bytes
            }
            for (IoVec f : frames) {
                assertThat(p.queue(f)).isTrue();
            }
            assertThat(p.queue(frame(99, 60))).as("the slots are full: flush first").isFalse();
            long[] results = new long[TapUringWriter.SLOTS];
            assertThat(p.flush(results)).isEqualTo(TapUringWriter.SLOTS);
            for (int i = 0; i < TapUringWriter.SLOTS; i++) {
                assertThat(results[i]).as("frame %d", i).isEqualTo(frames.get(i).totalBytes());
            }
            List<byte[]> got = received(s, TapUringWriter.SLOTS);
            assertThat(got).hasSize(TapUringWriter.SLOTS);
            for (int i = 0; i < got.size(); i++) {
                byte[] want = new byte[(int) frames.get(i).totalBytes() - VirtioNet.HDR_SIZE];
                MemorySegment.copy(MemorySegment.ofAddress(frames.get(i).address(1)).reinterpret(want.length), ValueLayout.JAVA_BYTE,
                        0, want, 0, want.length);
                assertThat(got.get(i)).as("frame %d, whole and in its place", i).isEqualTo(want);
            }
            assertThat(p.flush(results)).as("nothing queued").isZero();
            IoVec big = frame(7, TapUringWriter.SLOT_BYTES); // with its header, larger than a slot
            assertThat(p.queue(big)).as("left to writev").isFalse();
            assertThat(p.batch()).as("still in use").isEqualTo(TapUringWriter.SLOTS);
            assertThat(p.send(big)).isEqualTo(big.totalBytes());
            assertThat(received(s, 1)).hasSize(1);
        }
    }

    /**
     * Each refused frame costs itself only; the frames after it arrive, in order. The writes are linked (so that one
     * the TAP has no room for holds those after it): a refusal cancels the writes after it, which go again.
     */
    @Test
    void refusalsComeBackPerFrameAndIoUringStays() throws Exception {
        Port p = open(TapBackend.TxMethod.IO_URING);
        long[] r = new long[TapUringWriter.SLOTS];
        IoVec good = frame(1, 100);
        try (PacketSocket s = ns.inside(() -> PacketSocket.open(dev))) {
            int[] seqs = {1, -1, 3, 4, -1, -1, 7, 8};
            for (int seq : seqs) {
                // 8 bytes: shorter than an Ethernet header
                assertThat(p.queue(seq < 0 ? frame(0, 8) : frame(seq, 100 + seq))).isTrue();
            }
            assertThat(p.flush(r)).isEqualTo(seqs.length);
            for (int i = 0; i < seqs.length; i++) {
                assertThat(r[i]).as("frame %d", i).isEqualTo(seqs[i] < 0 ? -ErrnoException.EINVAL
                        : VirtioNet.HDR_SIZE + 100 + seqs[i]);
            }
            List<byte[]> got = received(s, 5);
            assertThat(got.stream().map(f -> MemorySegment.ofArray(f).get(BE32, 14)).toList())
                    .as("the frames after each refused one went out, in order").containsExactly(1, 3, 4, 7, 8);
            assertThat(p.queue(frame(9, 8))).isTrue();
            assertThat(p.flush(r)).as("a batch of one refused frame").isEqualTo(1);
            assertThat(r[0]).isEqualTo(-ErrnoException.EINVAL);
        }

        ns.ip("link", "set", "dev", dev, "down");
        assertThat(p.queue(good)).isTrue();
        assertThat(p.flush(r)).isEqualTo(1);
        assertThat(r[0]).as("link down: EIO").isEqualTo(-ErrnoException.EIO);

        ns.ip("link", "del", dev);
        assertThat(p.queue(good)).isTrue();
        assertThat(p.flush(r)).isEqualTo(1);
        assertThat(r[0]).as("deleted TAP: refused").isNegative();
        assertThat(p.batch()).as("the TAP's refusals are not io_uring's failures").isEqualTo(TapUringWriter.SLOTS);
        assertThat(p.ioMethod(false)).isEqualTo("io_uring");
    }

    /**
     * A TAP whose send buffer the host limited, and the host holding what was sent (bridged to a TAP behind a token
     * bucket that lets nothing more through): a flush returns the frames that went out, and keeps the first the TAP
     * had no room for and all after it; flushes while there is no room settle nothing and keep them all; when the
     * host lets go, the next flush writes them, in order. Unlinked, the writes after the first EAGAIN found room now
     * and then (the bridge frees what it drops or passes on while the batch is written) and overtook it.
     */
    @Test
    void framesTheTapHasNoRoomForAreKeptInOrderUntilItHas() throws Exception {
        Port p = open(TapBackend.TxMethod.IO_URING);
        try (Tap slowQueue = slowBridge()) {
            // limited before the writer's set-up (its first frame): linked from the start
            HostTap.setSendBuffer(backend.queueFd(0), 8192);
            long[] r = new long[TapUringWriter.SLOTS];
            assertThat(p.queue(unicast(100))).isTrue();
            assertThat(p.flush(r)).isEqualTo(1);
            assertThat(arrived(slowQueue)).as("the bridge forwards (the bucket lets the first through)").containsExactly(100);
            int n = TapUringWriter.SLOTS;
            int out = fillAndFlush(p, r, n);
            assertThat(out).as("frames that found room").isBetween(1, n - 1);
            assertKeptUntilRoom(p, r, slowQueue, n, out);
        }
    }

    /**
     * A host that limits the send buffer after the writer's set-up: the writes were unlinked (a TAP with its own,
     * unlimited, send buffer never answers EAGAIN, and links cost the worker a tenth of its CPU per frame), so the
     * first batch that meets a full TAP settles every frame, those without room as EAGAIN (the worker drops them:
     * the frames after them may be out already), and nothing reaches the host out of order. From then on the
     * queue's writes are linked: the next batch is kept from the first frame without room, in order, until there is.
     */
    @Test
    void aSendBufferLimitedLaterCostsOneBatchThenFramesAreKept() throws Exception {
        Port p = open(TapBackend.TxMethod.IO_URING);
        try (Tap slowQueue = slowBridge()) {
            long[] r = new long[TapUringWriter.SLOTS];
            assertThat(p.queue(unicast(100))).isTrue();
            assertThat(p.flush(r)).isEqualTo(1);
            assertThat(arrived(slowQueue)).containsExactly(100);
            HostTap.setSendBuffer(backend.queueFd(0), 8192);
            int n = TapUringWriter.SLOTS;
            assertThat(fillAndFlush(p, r, n)).as("unlinked: every frame has its result").isEqualTo(n);
            long eagain = java.util.Arrays.stream(r, 0, n).filter(x -> x == -ErrnoException.EAGAIN).count();
            assertThat(eagain).as("frames that found no room").isPositive();
            for (int i = 0; i < n; i++) {
                assertThat(r[i]).as("frame %d", i).isIn((long) VirtioNet.HDR_SIZE + 1000, (long) -ErrnoException.EAGAIN);
            }
            int out = 0;
            for (int i = 0; i < n; i++) {
                assertThat(p.queue(unicast(n + i))).isTrue();
            }
            out = p.flush(r);
            assertThat(out).as("linked now: kept from the first without room (none had any)").isLessThan(n);
            ns.exec("tc", "qdisc", "del", "dev", slow(), "root");
            assertThat(backend.queueFd(0).poll(Fd.POLLOUT, 5000) & Fd.POLLOUT).as("room again").isNotZero();
            assertThat(p.flush(r)).as("the kept frames, all of them").isEqualTo(n - out);
            List<Integer> got = arrived(slowQueue);
            assertThat(got).as("what reached the host: in order").isSorted().doesNotHaveDuplicates()
                    .contains(2 * n - 1);
        }
    }

    private String slow() {
        return "mqvs" + dev.substring(4);
    }

    /**
     * A second TAP bridged to ours behind a bucket that lets almost nothing through: what our TAP sends piles up in
     * its queue, charged to our send buffer. Returns the slow TAP's queue (the host's side, to read what arrived).
     */
    private Tap slowBridge() throws Exception {
        String slow = slow();
        Tap slowQueue = ns.inside(() -> Tap.openQueue(slow, false));
        ns.ip("link", "add", "br0", "type", "bridge");
        ns.ip("link", "set", dev, "master", "br0");
        ns.ip("link", "set", slow, "master", "br0");
        ns.exec("tc", "qdisc", "add", "dev", slow, "root", "tbf", "rate", "8bit", "burst", "1600", "limit", "1000000");
        for (String d : new String[] {"br0", dev, slow}) {
            ns.ip("link", "set", d, "up");
        }
        return slowQueue;
    }

    /** Queues {@code n} frames, sequence numbers 0.. , and flushes them. */
    private int fillAndFlush(Port p, long[] r, int n) throws Exception {
        for (int i = 0; i < n; i++) {
            assertThat(p.queue(unicast(i))).isTrue();
        }
        return p.flush(r);
    }

    /** The frames a flush settled went out; no room: nothing settled; room again: the kept ones, in order. */
    private void assertKeptUntilRoom(Port p, long[] r, Tap slowQueue, int n, int out) throws Exception {
        for (int i = 0; i < out; i++) {
            assertThat(r[i]).as("frame %d", i).isEqualTo(VirtioNet.HDR_SIZE + 1000);
        }
        assertThat(p.flush(r)).as("still no room: nothing settled, nothing lost").isZero();
        ns.exec("tc", "qdisc", "del", "dev", slow(), "root"); // what the host held goes, and with it the charge
        assertThat(backend.queueFd(0).poll(Fd.POLLOUT, 5000) & Fd.POLLOUT).as("room again").isNotZero();
        assertThat(p.flush(r)).as("the kept frames, all of them").isEqualTo(n - out);
        for (int i = 0; i < n - out; i++) {
            assertThat(r[i]).as("kept frame %d", out + i).isEqualTo(VirtioNet.HDR_SIZE + 1000);
        }
        List<Integer> got = arrived(slowQueue);
        assertThat(got).as("what reached the host: in order (the bucket dropped those it held)").isSorted()
                .doesNotHaveDuplicates().contains(out, n - 1);
        assertThat(p.batch()).isEqualTo(TapUringWriter.SLOTS);
    }

    /** The sequence numbers of our frames that came out of {@code q}, until none came for 0.5 s. */
    private static List<Integer> arrived(Tap q) {
        List<Integer> got = new ArrayList<>();
        try (Arena a = Arena.ofConfined()) {
            MemorySegment buf = a.allocate(2048);
            while (q.poll(Fd.POLLIN, 500) != 0) {
                long len = IoVec.read(q, buf.address(), buf.byteSize());
                if (len == 1000 && Short.toUnsignedInt(buf.get(BE16, 12)) == ETHERTYPE) {
                    got.add(buf.get(BE32, 14));
                }
            }
        }
        return got;
    }

    /** Header and 1000 bytes to an unknown unicast MAC (a bridge floods it), sequence number {@code seq}. */
    private IoVec unicast(int seq) {
        IoVec v = frame(seq, 1000);
        MemorySegment f = MemorySegment.ofAddress(v.address(1)).reinterpret(1000);
        f.asSlice(0, 6).fill((byte) 0);
        f.set(ValueLayout.JAVA_BYTE, 0, (byte) 0x02);
        f.set(ValueLayout.JAVA_BYTE, 5, (byte) 0x99);
        return v;
    }

    @Test
    void writevWhenAskedOrSwitched() throws Exception {
        Port p = open(TapBackend.TxMethod.WRITEV);
        assertThat(p.batch()).isZero();
        assertThat(p.queue(frame(1, 100))).isFalse();
        assertThat(p.ioMethod(false)).isEqualTo("writev");
        assertThat(backend.txThroughIoUring()).isFalse();
        backend.close();

        Port u = open(TapBackend.TxMethod.AUTO);
        assertThat(u.ioMethod(false)).as("auto, io_uring usable here").isEqualTo("io_uring");
        Experiment.TAP_WRITEV.set(true);
        assertThat(u.batch()).isZero();
        assertThat(u.ioMethod(false)).isEqualTo("writev");
        Experiment.TAP_WRITEV.reset();
        assertThat(u.batch()).isEqualTo(TapUringWriter.SLOTS);
    }

    /** With io_uring disabled on the host (kernel.io_uring_disabled=2) auto falls back and io_uring fails to open. */
    @Test
    void autoFallsBackWhenTheHostDisablesIoUring() throws Exception {
        Path knob = Path.of("/proc/sys/kernel/io_uring_disabled");
        assumeTrue(Files.isWritable(knob), "no kernel.io_uring_disabled here");
        String before = Files.readString(knob).trim();
        assumeTrue(before.equals("0"), "io_uring_disabled is " + before);
        try {
            Files.writeString(knob, "2");
            Port p = open(TapBackend.TxMethod.AUTO);
            assertThat(p.ioMethod(false)).isEqualTo("writev");
            assertThat(backend.txThroughIoUring()).isFalse();
            IoVec f = frame(1, 100);
            assertThat(p.send(f)).isEqualTo(f.totalBytes());
            backend.close();
            backend = null;
            assertThatThrownBy(() -> ns.inside(() -> TapBackend.open(dev, 1, TapBackend.TxMethod.IO_URING)))
                    .isInstanceOf(IllegalStateException.class).hasMessageContaining("TX through io_uring asked for")
                    .hasMessageContaining("io_uring_setup");
        } finally {
            Files.writeString(knob, before);
        }
    }
}
