package io.mqvirtio.peers;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.backend.TapBackend;
import io.mqvirtio.net.NetDevice;
import io.mqvirtio.net.QueueCounters;
import io.mqvirtio.vhostuser.VhostUserServer;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The host side fails under a real Linux guest: while the guest pings the host side of the TAP, the host takes the
 * TAP's link down and up three times (each time, frames the guest sends meanwhile fail with EIO), then the guest's
 * pings must come back again; at the end the TAP is deleted under the running device (EBADFD), and the device must
 * keep using what the guest sends, so that the guest's driver sees its frames complete and keeps eth0. With a
 * ring broken at the first EIO (as before), the guest never sent again.
 */
@Tag("peer")
class TapLinkFaultGuestTest {
    static final int PAIRS = 2;

    @TempDir
    Path dir;

    @Test
    @Timeout(400)
    void guestTrafficSurvivesLinkFlapsAndATapDeletedUnderIt() throws Exception {
        Path sock = dir.resolve("vm.sock");
        try (PeerLab lab = PeerLab.open(dir)) {
            TapBackend backend = lab.tap("mqvl", PAIRS);
            String tap = lab.ifname("mqvl");
            String host = lab.host();
            String doneAddr = lab.address(3);
            NetDevice dev = lab.own(new NetDevice(NetDevice.Config.of("flap", PAIRS), backend));
            lab.own(VhostUserServer.listen(sock, dev));
            Guest g = lab.guest("vm").vhostUser(sock).queues(PAIRS).smp(2).script("linkflap.sh").timeout(300)
                    .arg("ip", lab.guestCidr()).arg("peer", host).arg("done", doneAddr).arg("max", 200).arg("tail", 8)
                    .start();
            g.awaitLine("MQV-READY", 120);
            Thread.sleep(2000);
            for (int i = 0; i < 3; i++) {
                lab.ip("link", "set", tap, "down");
                Thread.sleep(1500);
                lab.ip("link", "set", tap, "up");
                lab.ip("addr", "replace", host + "/24", "dev", tap); // kept across down/up, but be sure
                Thread.sleep(1500);
            }
            lab.ip("addr", "add", doneAddr + "/24", "dev", tap); // tells the guest the flaps are over
            g.awaitLine("MQV-RESULT phase3=start", 150);
            long txErrorsBeforeDelete = txErrors(dev.counters());
            lab.ip("link", "del", tap);
            assertThat(g.awaitExit(120)).as("guest finished%s", g.context()).isTrue();
            String console = g.consoleText();
            Map<String, String> r = g.results();
            List<QueueCounters.Snapshot> c = dev.counters();
            String context = g.context() + "\ncounters " + c;
            assertThat(r).as(context).containsEntry("reached_done", "1").containsEntry("after_ok", "1")
                    .containsEntry("eth0", "present");
            assertThat(Long.parseLong(r.get("tx_done_after"))).as("the guest's frames completed after the TAP was deleted%s",
                    context).isGreaterThan(Long.parseLong(r.get("tx_done_before")));
            assertThat(txErrors(c)).as("frames into the deleted TAP, counted as errors%s", context)
                    .isGreaterThan(txErrorsBeforeDelete);
            assertThat(console).as(context).doesNotContain("timed out");
        }
    }

    private static long txErrors(List<QueueCounters.Snapshot> c) {
        long n = 0;
        for (int q = 0; q < PAIRS; q++) {
            n += c.get(2 * q + 1).errors();
        }
        return n;
    }
}
