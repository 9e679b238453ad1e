package io.mqvirtio.peers;

import static org.assertj.core.api.Assertions.assertThat;

import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code scripts/bench/guest-tcp.sh}, the guest's bulk TCP benchmark (docs/performance.md), still runs: the real guest
 * moves data both ways through mqvirtio serve and a TAP, and the script prints its rates and per-queue packets and
 * leaves no namespace behind. Its figures are not checked: speed is the benchmark's to report. What is checked is
 * multiqueue end to end: each vCPU's flow is carried by that vCPU's pair, both ways, by the device's own capture.
 */
@Tag("peer")
class GuestTcpBenchTest {
    @TempDir
    Path dir;

    @Test
    @Timeout(400)
    void theGuestBenchmarkRunsAndReportsEachDirection() throws Exception {
        Peers.requireRoot("a TAP in a network namespace");
        Peers.require("qemu-system-x86_64", "QEMU");
        ProcessBuilder pb = new ProcessBuilder("scripts/bench/guest-tcp.sh", "--pairs", "2", "--mb", "2", "--backends",
                "ours qemu-vhost", "--offloads", "on", "--out", dir.toString()).redirectErrorStream(true);
        // serve from the jar of the classes under test, not bin/mqvirtio (which would build one in the middle of this build)
        pb.environment().put("MQVIRTIO_CMD", String.join(" ", io.mqvirtio.cli.Launcher.command()));
        Process p = pb.start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertThat(p.waitFor(360, TimeUnit.SECONDS)).as(out).isTrue();
        assertThat(p.exitValue()).as(out).isZero();
        // QEMU with the kernel's vhost-net: measured where /dev/vhost-net exists, said to be skipped where not
        assertThat(out).contains(java.nio.file.Files.exists(Path.of("/dev/vhost-net")) ? "qemu-vhost"
                : "qemu-vhost: skipped, this kernel has no /dev/vhost-net");
        Matcher m = Pattern.compile("(?m)^ours\\s+on\\(on\\)\\s+(\\d+)\\s+(\\d+)\\s+(\\d+)\\s+(\\d+)\\s+(\\d+)/(\\d+) (\\d+)/(\\d+)"
                + "  \\(device: (\\d+/\\d+ \\d+/\\d+)\\)$").matcher(out);
        assertThat(m.find()).as("a row of rates and per-queue packets in%n%s%n%s", out,
                Peers.tail(dir.resolve("ours-on.console.log"), 30)).isTrue();
        for (int g = 1; g <= 8; g++) {
            assertThat(Long.parseLong(m.group(g))).as("field %d of %s", g, m.group()).isPositive();
        }
        // each guest queue is the device's queue of the same number: their counts agree, but for what the guest sent
        // or got after it read its own (its last ACKs and FINs, a few packets at most)
        String[] dev = m.group(9).split("[/ ]");
        for (int q = 0; q < 4; q++) {
            long guest = Long.parseLong(m.group(5 + q));
            assertThat(Long.parseLong(dev[q])).as("device count %d of %s against the guest's", q, m.group())
                    .isBetween(guest, guest + 8);
        }
        // every flow, guest TX and RX, settles on the pair of the vCPU it ran on (the TAP steers a flow's first
        // reply before it learns the flow's queue, so its first frames may go elsewhere), the 2-stream flows on both
        Matcher f = Pattern.compile("each flow settles on its vCPU's pair both ways: (\\w+); frames off it: (\\d+) of (\\d+)")
                .matcher(out);
        assertThat(f.find()).as(out).isTrue();
        assertThat(f.group(1)).as(out).isEqualTo("yes");
        assertThat(Long.parseLong(f.group(3))).as(out).isPositive();
        assertThat(out).containsPattern(" 5002:\\d+=1\\(\\d+%\\)/1\\(\\d+%\\)").containsPattern(" 5102:\\d+=1\\(\\d+%\\)/1\\(");
        Process ns = new ProcessBuilder("ip", "netns", "list").redirectErrorStream(true).start();
        String list = new String(ns.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        ns.waitFor(10, TimeUnit.SECONDS);
        assertThat(list).as("namespaces left").doesNotContain("mqvgt");
    }
}
