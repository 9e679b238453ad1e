package io.mqvirtio.net;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.backend.TapBackend;
import io.mqvirtio.linux.Tap;
import io.mqvirtio.linux.TestNetns;
import io.mqvirtio.vhostuser.LogCapture;
import io.mqvirtio.vhostuser.VhostUserServer;
import io.mqvirtio.virtio.VirtioFeatures;
import java.nio.file.Path;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.logging.Level;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The virtio-net header size is the TAP device's, not a queue's: another holder of one of its queues (here the test,
 * with a queue of its own, as a second process would) sets it to 10 (TUNSETVNETHDRSZ, the legacy header), and every
 * frame both ways was misread from then on (our 12-byte headers taken as frame bytes, the kernel's 10-byte ones as our
 * frames' first bytes) until serve restarted. Now pair 0's worker reads it each second and sets it back, logging the
 * first time (WARNING) and counting.
 */
@Timeout(30)
class TapHeaderSizeTest {
    static final long FEATURES = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioNet.F_MQ);

    @TempDir
    Path dir;

    @Test
    void aHeaderSizeAnotherHolderSetsIsSetBackWithinAboutASecond() throws Exception {
        String tap = "mqvh" + Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000));
        try (TestNetns ns = TestNetns.create(); LogCapture log = new LogCapture("io.mqvirtio.backend", Level.INFO).quiet()) {
            TapBackend backend = ns.inside(() -> TapBackend.open(tap, 2, TapBackend.TxMethod.WRITEV));
            try (NetDevice dev = new NetDevice(NetDevice.Config.of("hdr", 2), backend);
                 VhostUserServer server = VhostUserServer.listen(dir.resolve("h.sock"), dev);
                 EvilDriver d = new EvilDriver(server.path(), 2, 64, FEATURES, 1 << 20);
                 Tap other = ns.inside(() -> Tap.openQueue(tap, true))) {
                for (int round = 1; round <= 2; round++) {
                    other.setVnetHdrSize(10);
                    assertThat(backend.queueFd(1).vnetHdrSize()).as("the device's, seen on any queue").isEqualTo(10);
                    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(5);
                    while (backend.queueFd(1).vnetHdrSize() != VirtioNet.HDR_SIZE && System.nanoTime() < deadline) {
                        Thread.sleep(50);
                    }
                    assertThat(backend.queueFd(1).vnetHdrSize()).as("set back (round %d)", round)
                            .isEqualTo(VirtioNet.HDR_SIZE);
                    assertThat(backend.headerSizeResets()).isEqualTo(round);
                }
                assertThat(log.lines().stream().filter(l -> l.contains("header size was 10")))
                        .as("one line for two changes").hasSize(1);
                assertThat(d.tx(0).err.drain() + d.rx(0).err.drain()).as("no ring broke").isZero();
            }
        }
    }
}
