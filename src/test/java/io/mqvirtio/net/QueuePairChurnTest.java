package io.mqvirtio.net;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.backend.TapBackend;
import io.mqvirtio.linux.TestNetns;
import io.mqvirtio.vhostuser.LogCapture;
import io.mqvirtio.vhostuser.VhostUserServer;
import io.mqvirtio.virtio.VirtioFeatures;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.ThreadLocalRandom;
import java.util.logging.Level;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A guest that changes its queue pairs in a loop ({@code ethtool -L}; QEMU turns each change into SET_VRING_ENABLE on
 * both rings of every pair it touches), against a real TAP: every change of a pair attaches or detaches its queue.
 */
@Timeout(30)
class QueuePairChurnTest {
    static final long FEATURES = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioNet.F_MQ);

    @TempDir
    Path dir;

    /**
     * Each attach and detach used to log a line at INFO of its own, outside the frontend's allowance for such lines
     * (which the session's "ring N enabled" lines keep to): 2 lines per change, 400 here, as many as the guest liked.
     * The kernel's queues follow the last change.
     */
    @Test
    void aGuestTogglingAPairFloodsNoLog() throws Exception {
        String tap = "mqvc" + Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000));
        try (TestNetns ns = TestNetns.create(); LogCapture log = new LogCapture("io.mqvirtio.backend", Level.INFO).quiet()) {
            TapBackend backend = ns.inside(() -> TapBackend.open(tap, 2, TapBackend.TxMethod.WRITEV));
            ns.ip("link", "set", tap, "up");
            try (NetDevice dev = new NetDevice(NetDevice.Config.of("churn", 2), backend);
                 VhostUserServer server = VhostUserServer.listen(dir.resolve("c.sock"), dev);
                 EvilDriver d = new EvilDriver(server.path(), 2, 64, FEATURES, 1 << 20)) {
                assertThat(attachedQueues(ns, tap)).isEqualTo(2);
                int before = log.lines().size();
                for (int i = 0; i < 200; i++) {
                    d.fe.setVringEnable(2, false);
                    d.fe.setVringEnable(3, false); // pair 1 off: its queue detached
                    d.fe.setVringEnable(2, true); // on again: attached
                    d.fe.setVringEnable(3, true);
                }
                assertThat(log.lines().subList(before, log.lines().size())).as("lines logged for 400 changes of a pair")
                        .isEmpty();
                assertThat(attachedQueues(ns, tap)).isEqualTo(2);
                d.fe.setVringEnable(2, false);
                d.fe.setVringEnable(3, false);
                assertThat(attachedQueues(ns, tap)).as("pair 1 disabled: its queue detached").isEqualTo(1);
            }
        }
    }

    /**
     * The TAP deleted while a pair is disabled: attaching its queue fails for good (EINVAL). A guest toggling the
     * pair then had each attempt counted as a TX frame error and logged as "port error, frame dropped" with a hint
     * about runt frames; now it is one error and one line saying what failed, and the pair's rings go on.
     */
    @Test
    void aDeletedTapCostsOneErrorNotOnePerToggle() throws Exception {
        String tap = "mqvc" + Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000));
        try (TestNetns ns = TestNetns.create(); LogCapture log = new LogCapture("io.mqvirtio.net", Level.INFO).quiet()) {
            TapBackend backend = ns.inside(() -> TapBackend.open(tap, 2, TapBackend.TxMethod.WRITEV));
            try (NetDevice dev = new NetDevice(NetDevice.Config.of("gone", 2), backend);
                 VhostUserServer server = VhostUserServer.listen(dir.resolve("g.sock"), dev);
                 EvilDriver d = new EvilDriver(server.path(), 2, 64, FEATURES, 1 << 20)) {
                d.fe.setVringEnable(2, false);
                d.fe.setVringEnable(3, false);
                ns.ip("link", "del", tap);
                int before = log.lines().size();
                for (int i = 0; i < 50; i++) {
                    d.fe.setVringEnable(2, true);
                    d.fe.setVringEnable(3, true);
                    d.fe.setVringEnable(2, false);
                    d.fe.setVringEnable(3, false);
                }
                long errors = dev.counters().get(2).errors() + dev.counters().get(3).errors();
                assertThat(errors).as("errors counted for 50 enables of a pair whose TAP is gone").isEqualTo(1);
                List<String> lines = log.lines().subList(before, log.lines().size());
                assertThat(lines).hasSize(1);
                assertThat(lines.get(0)).contains("cannot attach").doesNotContain("frame dropped");
                assertThat(d.rx(1).err.drain() + d.tx(1).err.drain()).as("no ring broke").isZero();
            }
        }
    }

    /** The queues the kernel steers to (each attached queue is an rx-N in sysfs). */
    static int attachedQueues(TestNetns ns, String tap) throws Exception {
        return (int) ns.exec("ls", "/sys/class/net/" + tap + "/queues").lines().filter(l -> l.startsWith("rx-")).count();
    }
}
