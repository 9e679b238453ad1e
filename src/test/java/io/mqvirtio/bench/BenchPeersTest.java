package io.mqvirtio.bench;

import static io.mqvirtio.bench.BenchCommandTest.bench;
import static io.mqvirtio.bench.BenchCommandTest.checkOutputs;
import static io.mqvirtio.bench.BenchCommandTest.num;
import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.peers.Peers;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/** {@code mqvirtio bench} with its real peers: DPDK testpmd on either side (2, 3, 4) and the kernel's TAP (5 to 8). */
@Tag("peer")
class BenchPeersTest {
    @TempDir
    Path dir;

    @Test
    @Timeout(240)
    void dpdkScenariosRunBesideTheReferenceInRounds() throws Exception {
        Peers.require("dpdk-testpmd", "DPDK testpmd");
        Path out = dir.resolve("out");
        BenchCommandTest.Out o = bench("--scenarios", "2,3,4", "--pairs", "2", "--sizes", "64", "--seconds", "0.5",
                "--warmup", "0.5", "--rounds", "2", "--layout", "split", "--out", out.toString());
        assertThat(o.rc()).as(o.out() + o.err()).isZero();
        // the whole grid twice, round after round
        assertThat(o.err()).contains("[1/6] round 1 2 dpdk->ours 64 B 2 pairs split+inorder:")
                .contains("[4/6] round 2 2 dpdk->ours 64 B 2 pairs split+inorder:")
                .contains("[6/6] round 2 4 ours->dpdk 64 B 2 pairs split+inorder:");
        assertThat(o.out()).contains("med ref");
        List<Map<String, String>> rows = checkOutputs(out, 3);
        for (Map<String, String> r : rows) {
            assertThat(r.get("status")).as("%s%n%s", r, o.err()).isEqualTo("ok");
            assertThat(r.get("note")).contains("best of 2 rounds (Mpps ");
            double ratio = num(r, "ratio_to_reference");
            double median = num(r, "median_round_ratio_to_reference");
            if (r.get("scenario").equals("3")) {
                assertThat(ratio).isEqualTo(1.0);
                assertThat(median).isEqualTo(1.0);
                assertThat(r.get("threads")).contains("tx:testpmd-rte-worker-1=").contains("rx:testpmd-rte-worker-1=");
            } else {
                assertThat(ratio).as("ratio of %s", r).isPositive();
                assertThat(median).as("median ratio of %s", r).isPositive();
            }
        }
        String json = java.nio.file.Files.readString(out.resolve("bench.json"));
        assertThat(json).contains("\"rounds\":2").containsPattern("\"round_mpps\":\\[[0-9.]+,[0-9.]+\\]");
        assertThat(rows.get(0).get("threads")).contains("rx:backend-qp0=");
        assertThat(rows.get(2).get("threads")).contains("tx:driver-qp0=");
        assertThat(out.resolve("logs/testpmd-s3-2pairs-split-inorder-vhost.log")).exists();
        assertThat(ProcessHandle.allProcesses().filter(p -> p.info().commandLine().orElse("").contains("mqvbench-"
                + ProcessHandle.current().pid() + "-"))).as("testpmd processes left running").isEmpty();
    }

    /**
     * Every layout and IN_ORDER choice, asked of DPDK's virtio-user (devargs) and of our driver (features): each row
     * says what its connection negotiated (our backend's and our driver's view; for the reference, what DPDK's vhost
     * logged), and is compared with the reference that negotiated the same.
     */
    @Test
    @Timeout(300)
    void everyRingModeIsNegotiatedOnEveryScenario() throws Exception {
        Peers.require("dpdk-testpmd", "DPDK testpmd");
        Path out = dir.resolve("out");
        BenchCommandTest.Out o = bench("--scenarios", "2,3,4", "--pairs", "1", "--sizes", "64", "--seconds", "0.3",
                "--warmup", "0.3", "--layout", "both", "--in-order", "both", "--out", out.toString());
        assertThat(o.rc()).as(o.out() + o.err()).isZero();
        List<Map<String, String>> rows = checkOutputs(out, 12);
        assertThat(rows).extracting(r -> r.get("ring_asked")).containsExactly("split", "split", "split",
                "split+inorder", "split+inorder", "split+inorder", "packed", "packed", "packed",
                "packed+inorder", "packed+inorder", "packed+inorder");
        for (Map<String, String> r : rows) {
            assertThat(r.get("status")).as("%s%n%s", r, o.err()).isEqualTo("ok");
            assertThat(r.get("ring_negotiated")).as("what %s negotiated", r).isEqualTo(r.get("ring_asked"));
            assertThat(r.get("note")).as("both ends agree").doesNotContain("saw features");
            assertThat(num(r, "ratio_to_reference")).as("ratio of %s", r).isPositive();
            if (r.get("scenario").equals("3")) {
                assertThat(num(r, "ratio_to_reference")).isEqualTo(1.0);
            }
        }
        assertThat(o.out()).doesNotContain(BenchReport.ASKED_LEGEND);
        assertThat(out.resolve("logs/testpmd-s2-1pairs-packed-inorder-virtio-user.log")).content()
                .contains("packed_vq=1,in_order=1");
        assertThat(out.resolve("logs/testpmd-s3-1pairs-split-virtio-user.log")).content()
                .contains("packed_vq=0,in_order=0");
    }

    /**
     * The TAP path both ways beside its syscall-bound references: our driver through our backend into the TAP (5)
     * against one writev per frame (7), frames sent on the TAP's host side through our backend into our driver (6)
     * against one readv per frame (8), and io_uring's batched forms of both loops (9, 10). The kernel counted what was written, our driver received the host's frames
     * whole on both queues, each point is compared with the loop of its direction, and no namespace is left.
     */
    @Test
    @Timeout(180)
    void tapScenariosRunBesideTheirSyscallLoopsAndDeleteTheirNamespaces() throws Exception {
        Peers.requireRoot("a TAP device in a network namespace");
        Path out = dir.resolve("out");
        BenchCommandTest.Out o = bench("--scenarios", "5,6,7,8,9,10", "--pairs", "2", "--sizes", "64", "--seconds", "0.4",
                "--warmup", "0.2", "--layout", "packed", "--out", out.toString());
        assertThat(o.rc()).as(o.out() + o.err()).isZero();
        List<Map<String, String>> rows = checkOutputs(out, 6);
        for (Map<String, String> r : rows) {
            assertThat(r.get("status")).as("%s%n%s", r, o.err()).isEqualTo("ok");
            assertThat(num(r, "mpps")).as("rate of %s", r).isPositive();
            assertThat(num(r, "ratio_to_reference")).as("ratio of %s", r).isPositive();
        }
        Map<String, String> toTap = rows.get(0);
        assertThat(toTap.get("ring_negotiated")).isEqualTo("packed+inorder");
        long tapCount = Long.parseLong(toTap.get("note").replaceAll(".*rx_packets \\+(\\d+).*", "$1"));
        assertThat(tapCount).as("the kernel counted the frames").isPositive();
        Map<String, String> fromTap = rows.get(1);
        assertThat(fromTap.get("ring_negotiated")).isEqualTo("packed+inorder");
        assertThat(fromTap.get("threads")).contains("tx:inject-0=").contains("rx:backend-qp1=").contains("rx:driver-qp1=");
        String perQueue = fromTap.get("note").replaceAll(".*per queue Mpps ([0-9. ]+).*", "$1").trim();
        assertThat(perQueue.split(" ")).as("frames on both queues: %s", fromTap.get("note"))
                .hasSize(2).allSatisfy(q -> assertThat(Double.parseDouble(q)).isPositive());
        assertThat(fromTap.get("note")).doesNotContain("another length");
        assertThat(num(rows.get(2), "ratio_to_reference")).isEqualTo(1.0);
        assertThat(rows.get(2).get("threads")).contains("rx:syscall-q0=").contains("rx:syscall-q1=");
        assertThat(num(rows.get(3), "ratio_to_reference")).isEqualTo(1.0);
        assertThat(rows.get(3).get("note")).contains("one readv per frame");
        // 9: io_uring's batched writes, compared with 7's writev loop; the kernel counted them too
        assertThat(rows.get(4).get("note")).contains("32 IORING_OP_WRITE_FIXED per io_uring_enter");
        assertThat(Long.parseLong(rows.get(4).get("note").replaceAll(".*rx_packets \\+(\\d+).*", "$1"))).isPositive();
        // 10: io_uring's batched reads of the host's frames, compared with 8's readv loop, on both queues
        assertThat(rows.get(5).get("note")).contains("IORING_OP_READ_FIXED (RWF_NOWAIT) per io_uring_enter");
        String perQueue10 = rows.get(5).get("note").replaceAll(".*per queue Mpps ([0-9. ]+).*", "$1").trim();
        assertThat(perQueue10.split(" ")).as("frames on both queues: %s", rows.get(5).get("note"))
                .hasSize(2).allSatisfy(q -> assertThat(Double.parseDouble(q)).isPositive());
        Process p = new ProcessBuilder("ip", "netns", "list").redirectErrorStream(true).start();
        String list = new String(p.getInputStream().readAllBytes());
        p.waitFor(10, TimeUnit.SECONDS);
        assertThat(list).as("namespaces left").doesNotContain("mqvbench-");
    }
}
