package io.mqvirtio.backend;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import io.mqvirtio.linux.ErrnoException;
import io.mqvirtio.linux.Fd;
import io.mqvirtio.linux.IoUring;
import io.mqvirtio.linux.IoVec;
import io.mqvirtio.linux.PacketSocket;
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

    @Test
    void refusalsComeBackPerFrameAndIoUringStays() throws Exception {
        Port p = open(TapBackend.TxMethod.IO_URING);
        long[] r = new long[TapUringWriter.SLOTS];
        IoVec good = frame(1, 100);
        assertThat(p.queue(good)).isTrue();
        assertThat(p.queue(frame(2, 8))).isTrue(); // shorter than an Ethernet header
        assertThat(p.queue(good)).isTrue();
        assertThat(p.flush(r)).isEqualTo(3);
        assertThat(r[0]).isEqualTo(good.totalBytes());
        assertThat(r[1]).as("runt: EINVAL").isEqualTo(-ErrnoException.EINVAL);
        assertThat(r[2]).isEqualTo(good.totalBytes());

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
