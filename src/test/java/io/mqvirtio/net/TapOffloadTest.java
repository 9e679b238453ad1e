package io.mqvirtio.net;

import static org.assertj.core.api.Assertions.assertThat;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import io.mqvirtio.backend.TapBackend;
import io.mqvirtio.linux.TestNetns;
import io.mqvirtio.vhostuser.LogCapture;
import io.mqvirtio.virtio.VirtioFeatures;
import java.util.concurrent.ThreadLocalRandom;
import java.util.logging.Level;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * A TAP's offloads (TUNSETOFFLOAD) are its device's, not a queue's, and each set takes the host's rtnl lock. Every
 * pair's worker is told the negotiated features (SET_FEATURES, NET_SET_MTU, the reset at each session's end), and each
 * set the device's offloads again: N rtnl takes for N pairs, and N for each NET_SET_MTU, which changes none (a
 * frontend may send it in a loop). Now the device's offloads are set once per change; a queue reopened on a device
 * created again still gets them.
 */
@Timeout(60)
class TapOffloadTest {
    static final long FEATURES = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioNet.F_MQ);
    static final long CSUM = VirtioFeatures.bit(VirtioNet.F_GUEST_CSUM) | VirtioFeatures.bit(VirtioNet.F_GUEST_TSO4);

    @Test
    void theDevicesOffloadsAreSetOncePerChangeNotOncePerPair() throws Exception {
        assumeTrue(TestNetns.isRoot(), "needs root");
        String tap = "mqvo" + Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000));
        try (TestNetns ns = TestNetns.create(); LogCapture log = new LogCapture("io.mqvirtio", Level.INFO).quiet()) {
            TapBackend backend = ns.inside(() -> TapBackend.open(tap, 4, TapBackend.TxMethod.WRITEV));
            try (NetDevice dev = new NetDevice(NetDevice.Config.of("offload", 4), backend)) {
                dev.setFeatures(FEATURES | CSUM);
                assertThat(backend.offloadSets()).as("SET_FEATURES, 4 pairs").isEqualTo(1);
                assertThat(txChecksumming(ns, tap)).isTrue();
                for (int mtu = 1400; mtu < 1403; mtu++) {
                    dev.setMtu(mtu);
                }
                assertThat(backend.offloadSets()).as("NET_SET_MTU thrice: the offloads unchanged").isEqualTo(1);
                dev.setFeatures(FEATURES);
                assertThat(backend.offloadSets()).as("SET_FEATURES without GUEST_CSUM").isEqualTo(2);
                assertThat(txChecksumming(ns, tap)).isFalse();
                dev.reset();
                assertThat(backend.offloadSets()).as("the reset: none, as already").isEqualTo(2);
                dev.setFeatures(FEATURES | CSUM);
                assertThat(backend.offloadSets()).isEqualTo(3);

                // the device deleted and created again: every queue reopened on it, with the offloads
                ns.ip("link", "del", tap);
                ns.ip("tuntap", "add", "dev", tap, "mode", "tap", "multi_queue");
                long until = System.nanoTime() + 10_000_000_000L;
                while (backend.queuesReopened() < 4 && System.nanoTime() < until) {
                    Thread.sleep(20);
                }
                assertThat(backend.queuesReopened()).isEqualTo(4);
                assertThat(txChecksumming(ns, tap)).as("the new device has the guest's offloads").isTrue();
                long afterReopen = backend.offloadSets();
                dev.setFeatures(FEATURES);
                assertThat(backend.offloadSets()).isEqualTo(afterReopen + 1);
                assertThat(txChecksumming(ns, tap)).isFalse();
            }
        }
    }

    /** Whether the TAP may hand frames with a partial checksum to its reader: TUN_F_CSUM set (ethtool -k). */
    static boolean txChecksumming(TestNetns ns, String tap) throws Exception {
        String k = ns.exec("ethtool", "-k", tap);
        return k.lines().anyMatch(l -> l.startsWith("tx-checksumming: on"));
    }
}
