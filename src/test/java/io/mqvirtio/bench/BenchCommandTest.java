package io.mqvirtio.bench;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.cli.Bench;
import io.mqvirtio.virtio.Experiment;
import java.awt.image.BufferedImage;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import javax.imageio.ImageIO;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/** {@code mqvirtio bench} for real, with tiny durations: scenario 1 always, and what needs no peer. */
class BenchCommandTest {
    record Out(int rc, String out, String err) {}

    @TempDir
    Path dir;

    static Out bench(String... argv) {
        ByteArrayOutputStream o = new ByteArrayOutputStream();
        ByteArrayOutputStream e = new ByteArrayOutputStream();
        int rc = Bench.command(argv, new PrintStream(o, true, StandardCharsets.UTF_8), new PrintStream(e, true, StandardCharsets.UTF_8));
        return new Out(rc, o.toString(StandardCharsets.UTF_8), e.toString(StandardCharsets.UTF_8));
    }

    /** bench.csv as one map per row (header names as keys). */
    static List<Map<String, String>> csv(Path file) throws Exception {
        List<String> lines = Files.readAllLines(file);
        List<String> head = fields(lines.get(0));
        List<Map<String, String>> rows = new ArrayList<>();
        for (String line : lines.subList(1, lines.size())) {
            List<String> f = fields(line);
            assertThat(f).as("fields of %s", line).hasSameSizeAs(head);
            Map<String, String> row = new LinkedHashMap<>();
            for (int i = 0; i < head.size(); i++) {
                row.put(head.get(i), f.get(i));
            }
            rows.add(row);
        }
        return rows;
    }

    /** One CSV line's fields (RFC 4180 quoting). */
    static List<String> fields(String line) {
        List<String> out = new ArrayList<>();
        StringBuilder f = new StringBuilder();
        boolean quoted = false;
        for (int i = 0; i < line.length(); i++) {
            char c = line.charAt(i);
            if (quoted) {
                if (c == '"' && i + 1 < line.length() && line.charAt(i + 1) == '"') {
                    f.append('"');
                    i++;
                } else if (c == '"') {
                    quoted = false;
                } else {
                    f.append(c);
                }
            } else if (c == '"') {
                quoted = true;
            } else if (c == ',') {
                out.add(f.toString());
                f.setLength(0);
            } else {
                f.append(c);
            }
        }
        out.add(f.toString());
        return out;
    }

    static double num(Map<String, String> row, String key) {
        return Double.parseDouble(row.get(key));
    }

    /** A run's CSV, JSON and PNG are there and hold sane figures for each point that ran. */
    static List<Map<String, String>> checkOutputs(Path out, int points) throws Exception {
        Path csvFile = out.resolve("bench.csv");
        Path json = out.resolve("bench.json");
        Path png = out.resolve("bench.png");
        assertThat(csvFile).exists();
        assertThat(json).exists();
        assertThat(png).exists();
        List<Map<String, String>> rows = csv(csvFile);
        assertThat(rows).hasSize(points);
        String j = Files.readString(json);
        assertThat(j).startsWith("{\"tool\":\"mqvirtio bench\"").contains("\"results\":[").contains("\"threads\":[")
                .contains("\"interval_mpps\":[");
        BufferedImage img = ImageIO.read(png.toFile());
        assertThat(img).as("a PNG image").isNotNull();
        assertThat(img.getWidth()).isEqualTo(900);
        assertThat(img.getHeight()).isGreaterThan(300);
        for (Map<String, String> r : rows) {
            if (!r.get("status").equals("ok")) {
                continue;
            }
            assertThat(num(r, "mpps")).as("Mpps of %s", r).isGreaterThan(0.0005).isLessThan(200);
            assertThat(num(r, "gbps")).as("Gbit/s of %s", r)
                    .isCloseTo(num(r, "mpps") * num(r, "frame_bytes") * 8 / 1000, org.assertj.core.data.Percentage.withPercentage(1));
            assertThat(num(r, "seconds")).isPositive();
            // 7's writev loop and 9's io_uring stand where 5's worker does (the receiving side); nothing of ours sends there
            boolean sends = !r.get("scenario").equals("7") && !r.get("scenario").equals("9");
            if (sends) {
                assertThat(num(r, "tx_cpu_ns_per_packet")).as("sender CPU per packet of %s", r).isPositive();
                assertThat(r.get("threads")).contains("tx:");
            }
            assertThat(num(r, "rx_cpu_ns_per_packet")).as("receiver CPU per packet of %s", r).isPositive();
            assertThat(num(r, "cores")).as("cores of %s", r).isPositive().isLessThan(Runtime.getRuntime().availableProcessors() + 1.0);
            assertThat(r.get("threads")).contains("rx:");
        }
        return rows;
    }

    @Test
    @Timeout(120)
    void scenarioOneRunsAndWritesCsvJsonAndPng() throws Exception {
        Path out = dir.resolve("out");
        Out o = bench("--scenarios", "1", "--pairs", "1,2", "--sizes", "64,1500", "--seconds", "0.2", "--warmup", "0.3",
                "--repeat", "2", "--out", out.toString());
        assertThat(o.rc()).as(o.out() + o.err()).isZero();
        // by default both layouts with IN_ORDER: each point twice; progress: one line per point as it completes
        assertThat(o.out()).contains("rings split+inorder,packed+inorder").contains("8 points");
        assertThat(o.err()).contains("[1/8] 1 ours->ours 64 B 1 pair split+inorder:")
                .contains("[3/8] 1 ours->ours 64 B 1 pair packed+inorder:")
                .contains("[8/8] 1 ours->ours 1500 B 2 pairs packed+inorder:");
        assertThat(o.out()).contains("scenario").contains("ring").contains("vs ref")
                .containsPattern("1 ours->ours\\s+1500\\s+2 packed\\+inorder\\s+[0-9.]+")
                .doesNotContain(BenchReport.ASKED_LEGEND);
        List<Map<String, String>> rows = checkOutputs(out, 8);
        assertThat(rows).extracting(r -> r.get("ring_asked")).containsExactly("split+inorder", "split+inorder",
                "packed+inorder", "packed+inorder", "split+inorder", "split+inorder", "packed+inorder", "packed+inorder");
        for (Map<String, String> r : rows) {
            assertThat(r.get("status")).as("%s", r).isEqualTo("ok");
            // what the connection negotiated (the driver's and the backend's view agree: no word about it)
            assertThat(r.get("ring_negotiated")).as("%s", r).isEqualTo(r.get("ring_asked"));
            assertThat(r.get("note")).doesNotContain("our backend saw features");
            long features = Long.parseLong(r.get("features").substring(2), 16);
            assertThat(RingMode.of(features).label()).isEqualTo(r.get("ring_asked"));
            assertThat(r.get("ratio_to_reference")).as("no reference measured").isEmpty();
            // the backend's count is sampled over the same interval as the driver's: they agree (within what a
            // ring holds and the scheduling of a loaded 2-core machine allows), and warm-up traffic is not in it
            double ratio = num(r, "packets") / Double.parseDouble(r.get("sender_packets"));
            assertThat(ratio).as("receiver/sender packets in %s", r).isBetween(0.6, 1.4);
            assertThat(r.get("threads")).contains("tx:driver-qp0=").contains("rx:backend-qp0=");
            assertThat(r.get("note")).contains("best of 2 intervals (Mpps ");
            if (io.mqvirtio.linux.Affinity.onlineCpus() >= 2) { // pinned to CPUs 0 and 1 by default: their round trip
                assertThat(num(r, "cpu_round_trip_ns")).as("CPU round trip of %s", r).isPositive();
            }
            if (r.get("pairs").equals("2")) {
                assertThat(r.get("threads")).contains("tx:driver-qp1=").contains("rx:backend-qp1=");
            }
        }
    }

    @Test
    @Timeout(120)
    void missingDpdkIsSaidClearlyAndTheRestStillRuns() throws Exception {
        Path out = dir.resolve("out");
        System.setProperty("mqvirtio.testpmd", dir.resolve("no-such-testpmd").toString());
        Out o;
        try {
            o = bench("--scenarios", "1,2,3,4", "--pairs", "1", "--sizes", "64", "--seconds", "0.2", "--warmup", "0.1",
                    "--busy-poll", "--out", out.toString());
        } finally {
            System.clearProperty("mqvirtio.testpmd");
        }
        assertThat(o.rc()).as(o.out() + o.err()).isZero();
        assertThat(o.err()).contains("scenario 2 dpdk->ours skipped: DPDK is missing")
                .contains("scenario 3 dpdk->dpdk skipped: DPDK is missing")
                .contains("scenario 4 ours->dpdk skipped: DPDK is missing");
        // a point that did not run says what it was to be asked for, marked
        assertThat(o.out()).containsPattern("2 dpdk->ours\\s+64\\s+1 packed\\+inorder\\*\\s+skipped: DPDK is missing")
                .contains(BenchReport.ASKED_LEGEND);
        List<Map<String, String>> rows = checkOutputs(out, 8);
        for (int ring = 0; ring < 2; ring++) {
            List<Map<String, String>> ofRing = rows.subList(4 * ring, 4 * ring + 4);
            assertThat(ofRing.get(0).get("status")).isEqualTo("ok");
            assertThat(ofRing.get(0).get("ring_negotiated")).isEqualTo(ring == 0 ? "split+inorder" : "packed+inorder");
            assertThat(ofRing.subList(1, 4)).allSatisfy(r -> {
                assertThat(r.get("status")).isEqualTo("skipped");
                assertThat(r.get("ring_negotiated")).isEmpty();
                assertThat(r.get("features")).isEmpty();
            });
        }
    }

    /** --layout and --in-order choose the grid's rings; every row says what it negotiated, the JSON too. */
    @Test
    @Timeout(120)
    void layoutAndInOrderChooseWhatBothSidesNegotiate() throws Exception {
        Path out = dir.resolve("out");
        Out o = bench("--scenarios", "1", "--pairs", "1", "--sizes", "64", "--seconds", "0.2", "--warmup", "0.1",
                "--layout", "split", "--in-order", "both", "--out", out.toString());
        assertThat(o.rc()).as(o.out() + o.err()).isZero();
        assertThat(o.out()).contains("rings split,split+inorder").contains("2 points");
        List<Map<String, String>> rows = checkOutputs(out, 2);
        assertThat(rows).extracting(r -> r.get("ring_negotiated")).containsExactly("split", "split+inorder");
        for (Map<String, String> r : rows) {
            long f = Long.parseLong(r.get("features").substring(2), 16);
            assertThat(io.mqvirtio.virtio.VirtioFeatures.has(f, io.mqvirtio.virtio.VirtioFeatures.F_RING_PACKED)).isFalse();
            assertThat(io.mqvirtio.virtio.VirtioFeatures.has(f, io.mqvirtio.virtio.VirtioFeatures.F_IN_ORDER))
                    .isEqualTo(r.get("ring_asked").endsWith("+inorder"));
        }
        String json = Files.readString(out.resolve("bench.json"));
        assertThat(json).contains("\"layout\":\"split\"").contains("\"in_order\":\"both\"")
                .contains("\"rings\":[\"split\",\"split+inorder\"]")
                .contains("\"ring_asked\":\"split\",\"ring_negotiated\":\"split\",\"features\":\"0x");

        Path packed = dir.resolve("packed");
        o = bench("--scenarios", "1", "--pairs", "1", "--sizes", "64", "--seconds", "0.2", "--warmup", "0.1",
                "--layout", "packed", "--in-order", "off", "--out", packed.toString());
        assertThat(o.rc()).as(o.out() + o.err()).isZero();
        rows = checkOutputs(packed, 1);
        assertThat(rows.get(0).get("ring_negotiated")).isEqualTo("packed");
        assertThat(o.out()).containsPattern("1 ours->ours\\s+64\\s+1 packed\\s+[0-9.]+");
    }

    @Test
    void argumentErrorsAreClear() {
        int none = Scenario.values().length + 1;
        assertBad("unknown scenario '" + none + "'", "--scenarios", "1," + none);
        assertBad("--sizes: each value must be in 60..1518, got 20", "--sizes", "20");
        assertBad("Invalid value for option '--pairs' (LIST): 'x' is not an int", "--pairs", "x");
        assertBad("--cpus needs TX:RX CPU lists", "--cpus", "0");
        assertBad("--cpus: CPU 4096 is not online here", "--cpus", "0:4096");
        assertBad("--sink must be drop or copy", "--sink", "keep");
        assertBad("--seconds must be in", "--seconds", "0");
        assertBad("--repeat must be in 1..1000, got 0", "--repeat", "0");
        assertBad("unknown option --bogus", "--bogus");
        assertBad("unexpected argument 'sink'", "sink");
        assertBad("--ring must be a power of two", "ring", "--ring", "100");
        assertBad("--rounds must be in 1..1000, got 0", "--rounds", "0");
        assertBad("--poll-us must be in 0..1000000, got -1", "--poll-us", "-1");
        assertBad("Invalid value for option '--poll-us': 'x' is not an int", "--poll-us", "x");
        assertBad("Expected parameter for option '--layout' but found 'ring'", "--layout", "ring"); // ring: the subcommand
        assertBad("--layout must be split, packed or both, got 'split,packed'", "--layout", "split,packed");
        assertBad("Missing required parameter for option '--layout' (L)", "--layout");
        assertBad("--in-order must be on, off or both, got 'yes'", "--in-order", "yes");
        assertBad("--in-order must be on, off or both, got ''", "--in-order", "");
        assertBad("--layout must be split, packed or both, got 'Packed'", "ring", "--layout", "Packed");
        assertBad("--in-order must be on, off or both, got '1'", "ring", "--in-order", "1");
        assertBad("--ab: no experiment 'faster'; there are: split-read-ahead-short", "--ab", "faster");
        assertBad("--ab-window must be in", "--ab", "split-read-ahead-short", "--ab-window", "0");
    }

    @Test
    @Timeout(120)
    void pairedWindowsTurnTheExperimentOffAndOnAndTellTheRatio() throws Exception {
        Path out = dir.resolve("out");
        Experiment e = Experiment.SPLIT_READ_AHEAD_SHORT;
        boolean before = e.on();
        // 0.8 s per point in windows of 0.1 s: 4 pairs of neighbouring windows
        Out o = bench("--scenarios", "1", "--pairs", "1", "--sizes", "64", "--layout", "split", "--seconds", "0.8",
                "--warmup", "0.2", "--ab", "split-read-ahead-short", "--ab-window", "0.1", "--out", out.toString());
        assertThat(o.rc()).as(o.out() + o.err()).isZero();
        assertThat(o.err()).containsPattern("1 ours->ours 64 B 1 pair split\\+inorder: split-read-ahead-short on/off "
                + "[0-9.]+ \\(quartiles [0-9.]+-[0-9.]+\\) over 4 pairs of windows; median Mpps on [0-9.]+, off [0-9.]+");
        List<Map<String, String>> rows = checkOutputs(out, 1);
        assertThat(rows.get(0).get("note")).contains("split-read-ahead-short on/off");
        assertThat(num(rows.get(0), "packets")).isPositive();
        assertThat(e.on()).as("the experiment is back to its default").isEqualTo(before);
    }

    private static void assertBad(String message, String... argv) {
        Out o = bench(argv);
        assertThat(o.rc()).as("exit status of bench %s", String.join(" ", argv)).isEqualTo(2);
        assertThat(o.err()).contains(message).containsPattern("run 'mqvirtio (help bench|bench ring --help)' for usage");
    }
}
