package io.mqvirtio.peers;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.backend.TapBackend;
import io.mqvirtio.linux.TestNetns;
import io.mqvirtio.net.NetDevice;
import io.mqvirtio.net.QueueCounters;
import io.mqvirtio.vhostuser.VhostUserServer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
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
        Peers.requireRoot("a TAP device in a network namespace");
        Peers.require("qemu-system-x86_64", "QEMU");
        Path repo = Path.of("").toAbsolutePath();
        Path sock = dir.resolve("vm.sock");
        Path log = dir.resolve("console.log");
        int net = ThreadLocalRandom.current().nextInt(10, 250);
        String host = "10.79." + net + ".1";
        String doneAddr = "10.79." + net + ".3";
        String tap = "mqvl" + Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000));
        try (TestNetns ns = TestNetns.create()) {
            TapBackend backend = ns.inside(() -> TapBackend.open(tap, PAIRS));
            ns.ip("addr", "add", host + "/24", "dev", tap);
            ns.ip("link", "set", tap, "up");
            try (NetDevice dev = new NetDevice(NetDevice.Config.of("flap", PAIRS), backend);
                 VhostUserServer server = VhostUserServer.listen(sock, dev)) {
                Process qemu = new ProcessBuilder(repo.resolve("scripts/guest/run-guest.sh").toString(), "--vhost-user",
                        sock.toString(), "--queues", String.valueOf(PAIRS), "--smp", "2",
                        "--script", repo.resolve("scripts/guest/tests/linkflap.sh").toString(), "--log", log.toString(),
                        "--timeout", "300", "--arg", "ip=10.79." + net + ".2/24", "--arg", "peer=" + host,
                        "--arg", "done=" + doneAddr, "--arg", "max=200", "--arg", "tail=8")
                        .redirectErrorStream(true).redirectOutput(dir.resolve("run-guest.out").toFile())
                        .directory(repo.toFile()).start();
                long txErrorsBeforeDelete;
                try {
                    Peers.waitForLine(log, "MQV-READY", 120);
                    Thread.sleep(2000);
                    for (int i = 0; i < 3; i++) {
                        ns.ip("link", "set", tap, "down");
                        Thread.sleep(1500);
                        ns.ip("link", "set", tap, "up");
                        ns.ip("addr", "replace", host + "/24", "dev", tap); // kept across down/up, but be sure
                        Thread.sleep(1500);
                    }
                    ns.ip("addr", "add", doneAddr + "/24", "dev", tap); // tells the guest the flaps are over
                    Peers.waitForLine(log, "MQV-RESULT phase3=start", 150);
                    txErrorsBeforeDelete = txErrors(dev.counters());
                    ns.ip("link", "del", tap);
                    assertThat(qemu.waitFor(120, TimeUnit.SECONDS)).as("guest finished").isTrue();
                } finally {
                    Peers.stop(qemu, 5000);
                }
                String console = Files.readString(log);
                Map<String, String> r = QemuGuestTest.results(console);
                List<QueueCounters.Snapshot> c = dev.counters();
                String context = "\n--- guest ---\n" + Peers.tail(log, 40) + "\ncounters " + c;
                assertThat(r).as(context).containsEntry("reached_done", "1").containsEntry("after_ok", "1")
                        .containsEntry("eth0", "present");
                assertThat(Long.parseLong(r.get("tx_done_after"))).as("the guest's frames completed after the TAP was deleted%s",
                        context).isGreaterThan(Long.parseLong(r.get("tx_done_before")));
                assertThat(txErrors(c)).as("frames into the deleted TAP, counted as errors%s", context)
                        .isGreaterThan(txErrorsBeforeDelete);
                assertThat(console).as(context).doesNotContain("timed out");
            }
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
