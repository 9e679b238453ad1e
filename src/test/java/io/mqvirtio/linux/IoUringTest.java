package io.mqvirtio.linux;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.concurrent.ThreadLocalRandom;
import java.util.stream.Stream;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/** io_uring through the FFM layer: completions, errors as results, a full ring, and writes to a TAP queue inline. */
class IoUringTest {
    @BeforeEach
    void available() {
        String why = IoUring.unavailable();
        assumeTrue(why == null, "io_uring: " + why);
    }

    @Test
    void nopsCompleteWithTheirUserData() {
        try (IoUring r = IoUring.create(8)) {
            assertThat(r.capacity()).isEqualTo(8);
            for (int i = 1; i <= 8; i++) {
                assertThat(r.prepare(IoUring.OP_NOP, -1, 0, 0, 0, i)).isTrue();
            }
            assertThat(r.prepare(IoUring.OP_NOP, -1, 0, 0, 0, 9)).as("a full ring takes no more").isFalse();
            assertThat(r.submit(8)).isEqualTo(8);
            long[] data = new long[16];
            int[] res = new int[16];
            assertThat(r.reap(data, res, 16)).isEqualTo(8);
            assertThat(Arrays.copyOf(data, 8)).containsExactlyInAnyOrder(1, 2, 3, 4, 5, 6, 7, 8);
            assertThat(Arrays.copyOf(res, 8)).containsOnly(0);
            assertThat(r.free()).isEqualTo(8);
            assertThat(r.reap(data, res, 16)).isZero();
        }
    }

    @Test
    void writesLandAndFailuresComeBackAsResults() {
        try (IoUring r = IoUring.create(4); MemFd f = MemFd.create("uring", 4096); Arena a = Arena.ofConfined()) {
            MemorySegment buf = a.allocateFrom("hello, ring", StandardCharsets.US_ASCII);
            r.prepare(IoUring.OP_WRITE, f.fd(), buf.address(), 11, 100, 1);
            r.prepare(IoUring.OP_WRITE, 1 << 20, buf.address(), 11, 0, 2); // no such descriptor
            assertThat(r.submit(2)).isEqualTo(2);
            long[] data = new long[2];
            int[] res = new int[2];
            assertThat(r.reap(data, res, 2)).isEqualTo(2);
            int wrote = data[0] == 1 ? 0 : 1;
            assertThat(res[wrote]).isEqualTo(11);
            assertThat(res[1 - wrote]).as("-EBADF").isEqualTo(-ErrnoException.EBADF);
            try (Mmap m = Mmap.shared(f, 0, 4096)) {
                assertThat(m.segment().asSlice(100, 11).toArray(ValueLayout.JAVA_BYTE))
                        .isEqualTo("hello, ring".getBytes(StandardCharsets.US_ASCII));
            }
        }
        assertThatThrownBy(() -> IoUring.create(0)).isInstanceOf(IllegalArgumentException.class);
        assertThatThrownBy(() -> IoUring.create(5000)).isInstanceOf(IllegalArgumentException.class);
    }

    @Test
    void fixedFilesAndBuffers() {
        try (IoUring r = IoUring.create(4); MemFd f = MemFd.create("fixed", 4096); Arena a = Arena.ofConfined()) {
            MemorySegment buf = a.allocate(4096, 4096);
            buf.asSlice(0, 8).copyFrom(MemorySegment.ofArray("registrd".getBytes(StandardCharsets.US_ASCII)));
            r.registerFiles(f.fd());
            r.registerBuffers(buf);
            // file index 0, buffer 0; and a write outside the registered buffer, which the kernel refuses (-EFAULT)
            r.prepare(IoUring.OP_WRITE_FIXED, IoUring.SQE_FIXED_FILE, 0, buf.address(), 8, 16, 0, 1);
            r.prepare(IoUring.OP_WRITE_FIXED, IoUring.SQE_FIXED_FILE, 0, buf.address() + 4096, 8, 0, 0, 2);
            assertThat(r.submit(2)).isEqualTo(2);
            long[] data = new long[2];
            int[] res = new int[2];
            assertThat(r.reap(data, res, 2)).isEqualTo(2);
            int ok = data[0] == 1 ? 0 : 1;
            assertThat(res[ok]).isEqualTo(8);
            assertThat(res[1 - ok]).as("outside the registered buffer").isEqualTo(-14);
            try (Mmap m = Mmap.shared(f, 0, 4096)) {
                assertThat(m.segment().asSlice(16, 8).toArray(ValueLayout.JAVA_BYTE))
                        .isEqualTo("registrd".getBytes(StandardCharsets.US_ASCII));
            }
        }
    }

    @Test
    void framesWrittenToATapQueueGoInlineWithoutKernelWorkerThreads() throws Exception {
        assumeTrue(Files.exists(Path.of("/dev/net/tun")) && TestNetns.isRoot(), "needs /dev/net/tun and root");
        try (TestNetns ns = TestNetns.create(); IoUring r = IoUring.create(64); Arena a = Arena.ofConfined()) {
            Tap q = tapUp(ns);
            String dev = q.interfaceName();
            try (q) {
                long before = kernelWorkers();
                // 64 frames (a zero virtio-net header and a 60-byte frame each) in one submission
                MemorySegment frame = a.allocate(72, 8);
                frame.asSlice(12, 6).fill((byte) 0xff);
                frame.set(ValueLayout.JAVA_BYTE, 12 + 6, (byte) 2);
                frame.set(ValueLayout.JAVA_BYTE, 12 + 12, (byte) 0x88);
                frame.set(ValueLayout.JAVA_BYTE, 12 + 13, (byte) 0xb5);
                for (int i = 0; i < 64; i++) {
                    assertThat(r.prepare(IoUring.OP_WRITE, q.fd(), frame.address(), 72, -1, i)).isTrue();
                }
                assertThat(r.submit(64)).isEqualTo(64);
                long[] data = new long[64];
                int[] res = new int[64];
                assertThat(r.reap(data, res, 64)).as("all complete by the time submit returns").isEqualTo(64);
                assertThat(res).containsOnly(72);
                assertThat(Long.parseLong(ns.exec("cat", "/sys/class/net/" + dev + "/statistics/rx_packets").trim()))
                        .as("frames the kernel got from the TAP").isGreaterThanOrEqualTo(64);
                assertThat(kernelWorkers()).as("io_uring worker threads (iou-wrk) in this process").isEqualTo(before);
            }
        }
    }

    /**
     * What bench scenario 10 relies on: a read with RWF_NOWAIT on an empty TAP queue completes at once with EAGAIN
     * (it is not left armed), and a batch of them takes the frames waiting, in order, the rest EAGAIN, all inside
     * the one io_uring_enter.
     */
    @Test
    void noWaitReadsFromATapTakeWhatWaitsAndNeverWaitThemselves() throws Exception {
        assumeTrue(Files.exists(Path.of("/dev/net/tun")) && TestNetns.isRoot(), "needs /dev/net/tun and root");
        try (TestNetns ns = TestNetns.create(); IoUring r = IoUring.create(8); Arena a = Arena.ofConfined()) {
            Tap q = tapUp(ns);
            String dev = q.interfaceName();
            try (q) {
                MemorySegment slots = a.allocate(8 * 2048, 4096);
                r.registerFiles(q.fd());
                r.registerBuffers(slots);
                long[] data = new long[8];
                int[] res = new int[8];
                drain(r, slots, data, res); // whatever the kernel sent when the link came up
                assertThat(r.prepare(IoUring.OP_READ_FIXED, IoUring.SQE_FIXED_FILE, 0, slots.address(), 2048, -1, 0,
                        IoUring.RWF_NOWAIT, 0)).isTrue();
                r.submit(0);
                assertThat(r.reap(data, res, 8)).as("an empty queue's read is done at once").isEqualTo(1);
                assertThat(res[0]).isEqualTo(-ErrnoException.EAGAIN);
                try (PacketSocket out = ns.inside(() -> PacketSocket.open(dev))) {
                    PacketSocket.Batch b = new PacketSocket.Batch(a, 3);
                    for (int i = 0; i < 3; i++) {
                        MemorySegment f = a.allocate(60 + i, 8);
                        f.asSlice(0, 6).fill((byte) 0xff);
                        f.set(ValueLayout.JAVA_BYTE, 6, (byte) 2);
                        f.set(ValueLayout.JAVA_BYTE, 12, (byte) 0x88);
                        f.set(ValueLayout.JAVA_BYTE, 13, (byte) 0xb5);
                        f.set(ValueLayout.JAVA_BYTE, 14, (byte) i);
                        b.set(i, f);
                    }
                    assertThat(out.send(b, 3)).isEqualTo(3);
                }
                for (int i = 0; i < 8; i++) {
                    r.prepare(IoUring.OP_READ_FIXED, IoUring.SQE_FIXED_FILE, 0, slots.address() + i * 2048L, 2048, -1,
                            0, IoUring.RWF_NOWAIT, i);
                }
                assertThat(r.submit(0)).isEqualTo(8);
                assertThat(r.reap(data, res, 8)).as("all eight done inside the enter").isEqualTo(8);
                for (int i = 0; i < 8; i++) {
                    int slot = (int) data[i];
                    if (slot < 3) {
                        assertThat(res[i]).as("read %d", slot).isEqualTo(12 + 60 + slot);
                        assertThat(slots.get(ValueLayout.JAVA_BYTE, slot * 2048L + 12 + 14)).as("frame order").isEqualTo((byte) slot);
                    } else {
                        assertThat(res[i]).as("read %d", slot).isEqualTo(-ErrnoException.EAGAIN);
                    }
                }
            }
        }
    }

    private static void drain(IoUring r, MemorySegment slots, long[] data, int[] res) {
        for (int round = 0; round < 64; round++) {
            r.prepare(IoUring.OP_READ_FIXED, IoUring.SQE_FIXED_FILE, 0, slots.address(), 2048, -1, 0, IoUring.RWF_NOWAIT, 0);
            r.submit(0);
            if (r.reap(data, res, 8) == 1 && res[0] < 0) {
                return;
            }
        }
    }

    /**
     * A new TAP in {@code ns} (IPv6 off there, so that the kernel sends nothing of its own), one queue with the
     * virtio-net header, non-blocking, the link up.
     */
    private static Tap tapUp(TestNetns ns) throws Exception {
        ns.exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1");
        String dev = "mqvu" + Integer.toHexString(ThreadLocalRandom.current().nextInt(1 << 20));
        Tap q = ns.inside(() -> Tap.openQueue(dev, true));
        try {
            q.setVnetHdrSize(12);
            q.setNonBlocking(true);
            ns.ip("link", "set", "dev", dev, "up");
            return q;
        } catch (Exception | Error e) {
            q.close();
            throw e;
        }
    }

    /** Threads of this process named iou-wrk-*: io_uring's punts to its worker pool. */
    private static long kernelWorkers() throws IOException {
        try (Stream<Path> tasks = Files.list(Path.of("/proc/self/task"))) {
            return tasks.filter(t -> {
                try {
                    return Files.readString(t.resolve("comm")).startsWith("iou-wrk");
                } catch (IOException e) {
                    return false;
                }
            }).count();
        }
    }
}
