package io.mqvirtio.net;

import static io.mqvirtio.net.HostileDriverTest.FEATURES;
import static io.mqvirtio.net.HostileDriverTest.SIZE;
import static io.mqvirtio.net.HostileDriverTest.await;
import static io.mqvirtio.net.HostileDriverTest.frame;
import static io.mqvirtio.virtio.SplitRing.DESC_F_NEXT;
import static io.mqvirtio.virtio.SplitRing.DESC_F_WRITE;
import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.backend.LoopbackBackend;
import io.mqvirtio.capture.QueueCapture;
import io.mqvirtio.vhostuser.VhostUserServer;
import java.lang.foreign.MemorySegment;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A capturing device under a hostile driver: frames whose header and data are split over descriptors at odd places,
 * a chain of nothing but a header, a frame far longer than the snap length, a guest that rewrites a frame while it is
 * in flight, and every broken-TX-ring attack of {@link HostileDriverTest}: the capture copies only what the chain's
 * checked buffers hold (never more than the snap length), the device goes on, and tshark reads a well-formed file.
 */
class CaptureHostileDriverTest {
    @TempDir
    Path dir;

    /** A new session, once the device has let the last one go (it serves one frontend at a time). */
    private static EvilDriver connect(VhostUserServer server) throws InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
        while (true) {
            try {
                return new EvilDriver(server.path(), 2, SIZE, FEATURES, 1 << 20);
            } catch (io.mqvirtio.vhostuser.VhostUserException busy) {
                if (System.nanoTime() > deadline) {
                    throw busy;
                }
                Thread.sleep(50);
            }
        }
    }

    @Test
    @Timeout(120)
    void oddChainsAndBrokenRingsLeaveAWellFormedCaptureAndAWorkingDevice() throws Exception {
        List<QueueCapture> caps;
        try (NetDevice dev = new NetDevice(NetDevice.Config.of("hostile", 2), new LoopbackBackend(2, 1500));
             VhostUserServer server = VhostUserServer.listen(dir.resolve("hostile.sock"), dev)) {
            caps = dev.startCapture(dir, 128, 1 << 20);
            try (EvilDriver d = new EvilDriver(server.path(), 2, SIZE, FEATURES, 1 << 20)) {
                EvilDriver.Ring tx = d.tx(1);
                // 1: header split 5 + 7, the frame split 3 + 97 over two more descriptors
                byte[] f = frame(100, 3);
                long off = d.alloc(12 + 100);
                d.mem.asSlice(off, 12).fill((byte) 0);
                MemorySegment.copy(MemorySegment.ofArray(f), 0, d.mem, off + 12, 100);
                tx.desc(0, d.gpa(off), 5, DESC_F_NEXT, 1);
                tx.desc(1, d.gpa(off + 5), 7 + 3, DESC_F_NEXT, 2);
                tx.desc(2, d.gpa(off + 15), 97, 0, 0);
                tx.offer(0);
                // 2: nothing but a header: no frame, nothing captured
                long hdr = d.alloc(12);
                d.mem.asSlice(hdr, 12).fill((byte) 0);
                tx.desc(3, d.gpa(hdr), 12, 0, 0);
                tx.offer(3);
                // 3: 60000 bytes over two descriptors: captured as 128 of 60000
                long big = d.alloc(12 + 60000);
                d.mem.asSlice(big, 12 + 60000).fill((byte) 0x5a);
                d.mem.asSlice(big, 12).fill((byte) 0);
                tx.desc(4, d.gpa(big), 12 + 30000, DESC_F_NEXT, 5);
                tx.desc(5, d.gpa(big + 12 + 30000), 30000, 0, 0);
                tx.offer(4);
                tx.kick();
                await(() -> tx.usedIdx() == 3, "the three chains used");

                // a guest that rewrites a frame as fast as it can while the device reads and captures it
                Thread scribbler = Thread.ofPlatform().daemon().start(() -> {
                    for (long i = 0; !Thread.currentThread().isInterrupted(); i++) {
                        d.mem.asSlice(off + 12, 100).fill((byte) i);
                    }
                });
                try {
                    for (int i = 0; i < 50; i++) {
                        int at = tx.usedIdx();
                        tx.desc(6, d.gpa(off), 12 + 100, 0, 0);
                        tx.offer(6);
                        tx.kick();
                        int want = at + 1;
                        await(() -> tx.usedIdx() == want, "a rewritten frame used");
                    }
                } finally {
                    scribbler.interrupt();
                    scribbler.join(5000);
                }

            }
            // RX with writable buffers at odd sizes: a frame over three chains of 7, 50 and 2048 bytes
            try (EvilDriver d = connect(server)) {
                long[] sizes = {7 + 12, 50, 2048};
                for (int i = 0; i < sizes.length; i++) {
                    d.rx(0).desc(i, d.gpa(d.alloc(sizes[i])), (int) sizes[i], DESC_F_WRITE, 0);
                    d.rx(0).offer(i);
                }
                d.rx(0).kick();
                HostileDriverTest.sendValid(d, 0, frame(300, 9), 0);
                await(() -> d.rx(0).usedIdx() >= 1, "the frame received over the odd buffers");
            }
            for (long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(10); ; ) {
                try {
                    HostileDriverTest.assertEchoes(server.path(), 2, 1); // the device still works
                    break;
                } catch (io.mqvirtio.vhostuser.VhostUserException busy) {
                    if (System.nanoTime() > end) {
                        throw busy; // the last session never ended
                    }
                    Thread.sleep(50);
                }
            }
        }
        assertThat(caps.get(1).captured()).as("pair 1: the split frame, the big one, 50 rewritten").isGreaterThanOrEqualTo(52);
        // tshark reads both files whole: every frame at most the snap length, and the split one byte for byte
        for (int p = 0; p < 2; p++) {
            Process t = new ProcessBuilder("tshark", "-r", dir.resolve("hostile-qp" + p + ".pcapng").toString(), "-T",
                    "fields", "-E", "separator=,", "-e", "frame.len", "-e", "frame.cap_len", "-e", "eth.dst", "-e", "eth.src")
                    .redirectError(ProcessBuilder.Redirect.DISCARD).start();
            List<String> rows = new String(t.getInputStream().readAllBytes(), StandardCharsets.UTF_8).lines().toList();
            assertThat(t.waitFor(60, TimeUnit.SECONDS)).isTrue();
            assertThat(t.exitValue()).isZero();
            assertThat(rows).isNotEmpty().allSatisfy(r -> {
                String[] c = r.split(",");
                assertThat(Integer.parseInt(c[1])).isLessThanOrEqualTo(Math.min(128, Integer.parseInt(c[0])));
            });
            if (p == 1) {
                // the addresses straddle the split (3 bytes in one descriptor, the rest in the next)
                byte[] f = frame(100, 3);
                StringBuilder mac = new StringBuilder();
                for (int i = 0; i < 12; i++) {
                    mac.append(String.format("%02x", f[i])).append(i == 5 ? "," : i == 11 ? "" : ":");
                }
                assertThat(rows.get(0)).isEqualTo("100,100," + mac);
                assertThat(rows.get(1)).startsWith("60000,128,");
            } else {
                assertThat(rows).anyMatch(r -> r.startsWith("300,128,")); // the frame received over odd buffers
            }
        }
    }
}
