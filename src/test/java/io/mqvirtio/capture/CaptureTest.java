package io.mqvirtio.capture;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import io.mqvirtio.backend.LoopbackBackend;
import io.mqvirtio.net.NetDevice;
import io.mqvirtio.net.NetDriver;
import io.mqvirtio.net.NetQueuePair;
import io.mqvirtio.vhostuser.VhostUserServer;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code serve --capture}: the frames each queue pair moves, read back by tshark (Wireshark's reader, not ours) with
 * their lengths, bytes and directions; and the capture's own bounds (file size, links, permissions).
 */
public class CaptureTest {
    @TempDir
    Path dir;

    /** An Ethernet frame of {@code len} bytes: broadcast, source 02:00:00:00:PAIR:SEQ, ethertype 0x88b5, a pattern. */
    public static MemorySegment frame(Arena a, int pair, int seq, int len) {
        MemorySegment f = a.allocate(len);
        for (int i = 0; i < 6; i++) {
            f.set(ValueLayout.JAVA_BYTE, i, (byte) 0xff);
        }
        byte[] src = {2, 0, 0, 0, (byte) pair, (byte) seq};
        for (int i = 0; i < 6; i++) {
            f.set(ValueLayout.JAVA_BYTE, 6 + i, src[i]);
        }
        f.set(ValueLayout.JAVA_BYTE, 12, (byte) 0x88);
        f.set(ValueLayout.JAVA_BYTE, 13, (byte) 0xb5);
        for (int i = 14; i < len; i++) {
            f.set(ValueLayout.JAVA_BYTE, i, (byte) (seq + i));
        }
        return f;
    }

    private static List<String> tshark(Path file, String... fields) throws Exception {
        List<String> cmd = new ArrayList<>(List.of("tshark", "-r", file.toString(), "-T", "fields", "-E", "separator=,"));
        for (String f : fields) {
            cmd.add("-e");
            cmd.add(f);
        }
        // stderr: tshark's remarks (running as root), not data
        Process p = new ProcessBuilder(cmd).redirectError(ProcessBuilder.Redirect.DISCARD).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertThat(p.waitFor(60, TimeUnit.SECONDS)).isTrue();
        assertThat(p.exitValue()).as(out).isZero();
        return out.lines().filter(l -> !l.isBlank()).toList();
    }

    @Test
    @Timeout(120)
    void tsharkReadsEveryFrameOfEveryQueueWithItsDirection() throws Exception {
        int pairs = 2;
        int[] sizes = {60, 64, 200, 1514};
        try (NetDevice device = new NetDevice(NetDevice.Config.of("vm0", pairs), new LoopbackBackend(pairs, 1500));
             VhostUserServer server = VhostUserServer.listen(dir.resolve("vm0.sock"), device)) {
            List<QueueCapture> caps = device.startCapture(dir, QueueCapture.DEFAULT_SNAPLEN, 1 << 30);
            assertThat(caps).hasSize(pairs);
            NetDriver nic = NetDriver.connect(server.path(), NetDriver.Options.pairs(pairs));
            try (nic; Arena a = Arena.ofConfined()) {
                for (int p = 0; p < pairs; p++) {
                    NetQueuePair q = nic.pair(p);
                    for (int s = 0; s < sizes.length; s++) {
                        assertThat(q.send(frame(a, p, s, sizes[s]))).isEqualTo(1);
                    }
                    MemorySegment[] bufs = {a.allocate(2048), a.allocate(2048), a.allocate(2048), a.allocate(2048)};
                    int[] lens = new int[bufs.length];
                    int got = 0;
                    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
                    while (got < sizes.length && System.nanoTime() < deadline) {
                        q.awaitReceive(100);
                        got += q.receive(bufs, lens, bufs.length);
                    }
                    assertThat(got).as("frames looped back on pair %d", p).isEqualTo(sizes.length);
                }
            }
        } // the device closes its captures after its workers
        for (int p = 0; p < pairs; p++) {
            Path f = dir.resolve("vm0-qp" + p + ".pcapng");
            assertThat(Files.getPosixFilePermissions(f)).isEqualTo(PosixFilePermissions.fromString("rw-------"));
            // frame.len, the source MAC, the direction flag (1 in: to the guest, 2 out: from it), the last byte
            List<String> rows = tshark(f, "frame.len", "eth.src", "frame.packet_flags_direction", "frame.interface_name");
            assertThat(rows).as("pair %d: each frame out (sent) and back in (received)", p).hasSize(2 * sizes.length);
            List<String> out = rows.stream().filter(r -> r.split(",")[2].equals("0x00000002")).toList();
            List<String> in = rows.stream().filter(r -> r.split(",")[2].equals("0x00000001")).toList();
            for (List<String> dirRows : List.of(out, in)) {
                assertThat(dirRows).hasSize(sizes.length);
                for (int s = 0; s < sizes.length; s++) {
                    assertThat(dirRows.get(s)).isEqualTo(sizes[s] + ",02:00:00:00:0" + p + ":0" + s + ","
                            + (dirRows == out ? "0x00000002" : "0x00000001") + ",vm0-qp" + p);
                }
            }
            // every byte as sent: the data after the header, as tshark dumps it
            List<String> data = tshark(f, "data.data");
            for (int s = 0; s < sizes.length; s++) {
                StringBuilder hex = new StringBuilder();
                for (int i = 14; i < sizes[s]; i++) {
                    hex.append(String.format("%02x", (byte) (s + i)));
                }
                assertThat(data).contains(hex.toString());
            }
        }
    }

    @Test
    @Timeout(60)
    void aFileStopsAtItsLimitAndTheRestIsCountedAsLeftOut() throws Exception {
        long limit = 16 * 1024;
        try (NetDevice device = new NetDevice(NetDevice.Config.of("vm1", 1), new LoopbackBackend(1, 1500));
             VhostUserServer server = VhostUserServer.listen(dir.resolve("vm1.sock"), device)) {
            QueueCapture cap = device.startCapture(dir, 128, limit).getFirst();
            NetDriver nic = NetDriver.connect(server.path(), NetDriver.Options.pairs(1));
            try (nic; Arena a = Arena.ofConfined()) {
                NetQueuePair q = nic.pair(0);
                MemorySegment f = frame(a, 0, 1, 1000);
                MemorySegment[] bufs = {a.allocate(2048), a.allocate(2048)};
                int[] lens = new int[2];
                for (int i = 0; i < 400; i++) {
                    q.send(f);
                    q.awaitReceive(50);
                    q.receive(bufs, lens, 2);
                }
            }
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
            while (cap.dropped() == 0 && System.nanoTime() < deadline) {
                Thread.sleep(20);
            }
            assertThat(cap.dropped()).as("frames left out once the file was full").isPositive();
        }
        Path f = dir.resolve("vm1-qp0.pcapng");
        assertThat(Files.size(f)).isLessThanOrEqualTo(limit);
        List<String> rows = tshark(f, "frame.len", "frame.cap_len");
        assertThat(rows).isNotEmpty().allSatisfy(r -> assertThat(r).isEqualTo("1000,128")); // snap length 128
    }

    @Test
    @Timeout(30)
    void whatHadTheFilesNameIsReplacedNotWrittenThrough() throws Exception {
        Path victim = Files.writeString(dir.resolve("victim"), "keep me");
        Files.createSymbolicLink(dir.resolve("vm2-qp0.pcapng"), victim);
        // a FIFO: opening it for writing would wait for a reader forever
        Process mkfifo = new ProcessBuilder("mkfifo", dir.resolve("vm2-qp1.pcapng").toString()).start();
        assertThat(mkfifo.waitFor()).isZero();
        try (NetDevice device = new NetDevice(NetDevice.Config.of("vm2", 2), new LoopbackBackend(2, 1500))) {
            assertThat(device.startCapture(dir, 256, 1 << 20)).hasSize(2);
        }
        assertThat(Files.readString(victim)).isEqualTo("keep me");
        for (String f : List.of("vm2-qp0.pcapng", "vm2-qp1.pcapng")) {
            assertThat(dir.resolve(f)).isRegularFile().isNotEqualTo(victim);
            assertThat(Files.isSymbolicLink(dir.resolve(f))).isFalse();
            assertThat(Files.size(dir.resolve(f))).as("a pcapng header").isPositive();
        }
        assertThatThrownBy(() -> new QueueCapture(dir.resolve("x.pcapng"), "x", "x", 10, 1 << 20))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("snap length");
    }

    /**
     * A writer held back (a disk that fell behind, or stopped) while the guest sends 64 KiB frames: the queue holds
     * at most {@link QueueCapture#QUEUE_BYTES} of them, not {@link QueueCapture#QUEUE} frames of any size (which was
     * 256 MiB of these); the rest are left out and counted, and what was queued is in the file once the writer goes
     * on.
     */
    @Test
    @Timeout(30)
    void aWriterThatFellBehindHoldsBoundedBytesNotFrames() throws Exception {
        java.util.concurrent.CountDownLatch disk = new java.util.concurrent.CountDownLatch(1);
        java.util.concurrent.ThreadFactory slow = r -> Thread.ofVirtual().unstarted(() -> {
            try {
                disk.await();
            } catch (InterruptedException e) {
                return;
            }
            r.run();
        });
        int size = 65_536;
        int frames = 1000; // 64 MiB
        Path file = dir.resolve("big.pcapng");
        QueueCapture cap = new QueueCapture(file, "big", "big", Pcapng.MAX_SNAPLEN, 1L << 30, slow);
        try (Arena a = Arena.ofConfined()) {
            io.mqvirtio.linux.IoVec v = new io.mqvirtio.linux.IoVec(1);
            v.add(a.allocate(12 + size));
            for (int i = 0; i < frames; i++) {
                cap.sent(v, 12);
            }
        }
        long queued = frames - cap.dropped();
        assertThat(queued * size).as("bytes queued").isLessThanOrEqualTo(QueueCapture.QUEUE_BYTES);
        assertThat(queued).isEqualTo(QueueCapture.QUEUE_BYTES / size);
        disk.countDown();
        cap.close();
        assertThat(cap.captured()).isEqualTo(queued);
        assertThat(Files.size(file)).isGreaterThan(queued * size);
    }

    /**
     * A capture that runs for months sees the host's clock step (the first time sync after boot, a clock set by hand)
     * or stop (CLOCK_MONOTONIC does not count a suspend): each frame's timestamp is the time of day when it was
     * captured. It was the time of day at the capture's start plus the monotonic time since, so after a step of an
     * hour every frame for the rest of the capture (serve's life) was an hour off the host's clock and its logs.
     */
    @Test
    void eachFrameIsStampedWithTheTimeOfDayAfterTheClockSteps() throws Exception {
        long start = 1_700_000_000_000_000_000L;
        long step = TimeUnit.HOURS.toNanos(1);
        java.util.concurrent.atomic.AtomicLong wall = new java.util.concurrent.atomic.AtomicLong(start);
        Path file = dir.resolve("clock.pcapng");
        QueueCapture cap = new QueueCapture(file, "clock", "clock", Pcapng.MAX_SNAPLEN, 1L << 30,
                Thread.ofPlatform().daemon().factory(), wall::get);
        try (Arena a = Arena.ofConfined()) {
            io.mqvirtio.linux.IoVec v = new io.mqvirtio.linux.IoVec(1);
            v.add(a.allocate(12 + 60));
            cap.sent(v, 12);
            wall.addAndGet(step); // the host's clock steps an hour forward
            cap.sent(v, 12);
        }
        cap.close();
        List<Long> stamps = packetTimestamps(java.nio.ByteBuffer.wrap(Files.readAllBytes(file)));
        assertThat(stamps).hasSize(2);
        assertThat(stamps.get(0)).isBetween(start, start + TimeUnit.SECONDS.toNanos(5));
        assertThat(stamps.get(1)).as("the frame after the step").isBetween(start + step,
                start + step + TimeUnit.SECONDS.toNanos(5));
    }

    /** The timestamps of a pcapng file's Enhanced Packet Blocks (nanoseconds, as ours write them). */
    private static List<Long> packetTimestamps(java.nio.ByteBuffer b) {
        b.order(java.nio.ByteOrder.LITTLE_ENDIAN);
        List<Long> stamps = new ArrayList<>();
        while (b.remaining() >= 12) {
            int at = b.position();
            int type = b.getInt(at);
            int len = b.getInt(at + 4);
            if (type == Pcapng.EPB) {
                stamps.add((Integer.toUnsignedLong(b.getInt(at + 12)) << 32) | Integer.toUnsignedLong(b.getInt(at + 16)));
            }
            b.position(at + len);
        }
        return stamps;
    }
}
