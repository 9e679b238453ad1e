package io.mqvirtio.cli;

import io.mqvirtio.bench.BenchPlot;
import io.mqvirtio.bench.BenchReport;
import io.mqvirtio.bench.BenchRunner;
import io.mqvirtio.bench.Measurement;
import io.mqvirtio.bench.RingBenchmark;
import io.mqvirtio.bench.RingMode;
import io.mqvirtio.bench.Scenario;
import io.mqvirtio.linux.Affinity;
import io.mqvirtio.virtio.Experiment;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.OffsetDateTime;
import java.time.format.DateTimeFormatter;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;

/**
 * {@code mqvirtio bench}: the scenario benchmark (our driver and backend against DPDK's testpmd, the kernel's TAP),
 * printed as a table and written as CSV, JSON and a PNG plot; {@code mqvirtio bench ring}: the ring benchmark.
 */
public final class Bench {
    static final String USAGE = """
              bench                our driver, our backend and DPDK testpmd against each other: packets per second,
                                   Gbit/s, CPU time per packet of every busy thread, ratio to the reference
                                   ("vs ref": 3 for 1, 2 and 4; 7 for 5; 8 for 6)
                  --scenarios LIST 1 ours->ours (our driver -> our backend's sink), 2 dpdk->ours (testpmd virtio-user
                                   txonly -> our backend), 3 dpdk->dpdk (virtio-user -> testpmd vhost rxonly: the
                                   reference), 4 ours->dpdk (our driver -> testpmd vhost), 5 ours->tap (our driver ->
                                   our backend -> a multiqueue TAP in a namespace of its own; root), 6 tap->ours
                                   (packet sockets on the host side of the TAP -> our backend -> our driver; root),
                                   7 writev->tap and 8 tap->readv (the syscall-bound loops 5 and 6 are compared with:
                                   one writev / readv per frame on each TAP queue fd; root); default all
                  --sizes LIST     frame sizes in bytes (default 64,512,1500)
                  --pairs LIST     queue pairs (default 1,2,4)
                  --layout L       the virtqueue layout both sides of every scenario are asked for: split, packed
                                   or both (default both): our driver's features, virtio-user's packed_vq=0|1; our
                                   backend and testpmd's vhost offer both and take what their frontend asks
                  --in-order O     VIRTIO_F_IN_ORDER, asked of both sides likewise: on, off or both (default on:
                                   virtio-user's in_order=1|0, our driver's features). Every scenario runs in each
                                   layout and IN_ORDER choice; each row says what its connection negotiated ("ring":
                                   split, split+inorder, packed, packed+inorder), and its reference (3) is the one
                                   that negotiated the same
                  --seconds S      measured time per point (default 5)
                  --warmup S       traffic before each point's first measured interval (default 2)
                  --repeat N       measured intervals per point, back to back; the best is reported, all are in
                                   the JSON (default 1; on a shared machine, 3 to 5 find its quieter moments)
                  --rounds N       measure the whole grid N times, round after round, each point set up afresh;
                                   a point is its best round, and "med ref" is the median over the rounds of
                                   its ratio to the reference of the same round (default 1; on a machine whose
                                   speed drifts, 5 or more)
                  --busy-poll      our backend's workers poll their rings (default: they sleep until kicked)
                  --poll-us N      without --busy-poll: our workers poll N µs more after frames moved before
                                   they sleep (serve --poll-us); default 0
                  --cpus TX:RX     CPU lists for the sending and the receiving side's busy threads, e.g. 0:1 or
                                   0,1:2,3 (thread i of a side on entry i mod length; testpmd gets one forwarding
                                   lcore per entry); none: no pinning (default 0:1 with two CPUs or more)
                  --sink drop|copy our backend's sink drops frames untouched, or copies each out of guest memory
                                   as DPDK's vhost does into an mbuf (default drop)
                  --out DIR        where bench.csv, bench.json, bench.png and testpmd logs go (default bench-results)
                  --ab NAME        paired windows: turn the data path's experiment NAME off and on in turn, in
                                   windows of --ab-window S (default 0.5), over each point's --seconds x --repeat;
                                   each point tells the median on/off ratio of neighbouring windows (names: see
                                   docs/performance.md, "Paired windows")
              bench ring           the ring benchmark: a driver thread and a device thread on one ring
                  --sizes LIST     frame sizes in bytes (default 64,1500)
                  --ring N         ring size, a power of two (default 256)
                  --layout L       split, packed or both (default both)
                  --in-order O     on, off or both (default on)
                  --seconds S      measured time per size (default 5)
                  --warmup S       warm-up per size (default 2)
            """;

    static final Set<String> VALUED = Set.of("scenarios", "sizes", "pairs", "seconds", "warmup", "repeat", "rounds", "cpus",
            "sink", "out", "poll-us", "layout", "in-order", "ab", "ab-window");
    static final Set<String> FLAGS = Set.of("busy-poll");

    private Bench() {}

    /** {@code mqvirtio bench ARGS…} with Main's error handling: exit status 0, 1 (failure) or 2 (usage). */
    public static int command(String[] argv, PrintStream out, PrintStream err) {
        String[] all = new String[argv.length + 1];
        all[0] = "bench";
        System.arraycopy(argv, 0, all, 1, argv.length);
        return Main.run(all, out, err);
    }

    static int run(String[] argv, PrintStream out, PrintStream err) throws IOException, InterruptedException {
        if (argv.length > 0 && argv[0].equals("ring")) {
            return ring(new Args(Arrays.copyOfRange(argv, 1, argv.length), Set.of("sizes", "ring", "seconds", "warmup",
                    "layout", "in-order"), Set.of()), out);
        }
        Args a = new Args(argv, VALUED, FLAGS);
        if (!a.positional().isEmpty()) {
            throw new Args.UsageException("bench takes options only, or 'ring': unexpected '" + a.positional().get(0) + "'");
        }
        List<Scenario> scenarios;
        try {
            scenarios = Scenario.parseList(a.string("scenarios", "all"));
        } catch (IllegalArgumentException e) {
            throw new Args.UsageException("--scenarios: " + e.getMessage());
        }
        List<Integer> sizes = a.integers("sizes", "64,512,1500", 60, 1518);
        List<Integer> pairs = a.integers("pairs", "1,2,4", 1, 16);
        List<RingMode> rings = ringModes(a);
        double seconds = a.decimal("seconds", 5, 0.05, 3600);
        double warmup = a.decimal("warmup", 2, 0, 3600);
        int repeat = a.integer("repeat", 1, 1, 1000);
        int rounds = a.integer("rounds", 1, 1, 1000);
        boolean busyPoll = a.flag("busy-poll");
        int pollMicros = a.integer("poll-us", 0, 0, 1_000_000);
        String sink = a.string("sink", "drop");
        if (!sink.equals("drop") && !sink.equals("copy")) {
            throw new Args.UsageException("--sink must be drop or copy, got '" + sink + "'");
        }
        Experiment ab = null;
        String abName = a.string("ab", null);
        if (abName != null) {
            try {
                ab = Experiment.named(abName);
            } catch (IllegalArgumentException e) {
                throw new Args.UsageException("--ab: " + e.getMessage());
            }
        }
        double abWindow = a.decimal("ab-window", 0.5, 0.05, 60);
        int online = Affinity.onlineCpus();
        int[][] cpus = parseCpus(a.string("cpus", online >= 2 ? "0:1" : "none"), online);
        Path outDir = Path.of(a.string("out", "bench-results"));
        Files.createDirectories(outDir);
        Path logs = outDir.resolve("logs");
        Files.createDirectories(logs);

        Logging.quiet();
        String started = OffsetDateTime.now().format(DateTimeFormatter.ISO_OFFSET_DATE_TIME);
        String loadBefore = loadAverage();
        out.printf("mqvirtio bench: scenarios %s, frames %s B, pairs %s, rings %s, %s%.1f s per point after %.1f s "
                        + "warm-up, %s, %s sink, CPUs %s%n", titles(scenarios), join(sizes), join(pairs), labels(rings),
                repeat > 1 ? "best of " + repeat + " x " : "", seconds, warmup,
                busyPoll ? "busy-polling workers"
                        : pollMicros > 0 ? "workers polling " + pollMicros + " µs before sleeping" : "workers woken by kicks", sink, cpuText(cpus));
        out.printf("%d points%s; load average %s; results in %s%n",
                scenarios.size() * sizes.size() * pairs.size() * rings.size(),
                rounds > 1 ? " x " + rounds + " rounds" : "", loadBefore, outDir);
        out.flush();
        BenchRunner.Options o = new BenchRunner.Options(scenarios, sizes, pairs, rings, warmup, seconds, repeat, rounds, busyPoll,
                pollMicros, cpus[0], cpus[1], sink.equals("copy"), logs, ab, abWindow);
        List<Measurement> results = BenchRunner.run(o, new BenchRunner.Listener() {
            @Override
            public void measured(int done, int total, int round, Measurement m) {
                String what = String.format(Locale.ROOT, "[%d/%d]%s %s %d B %d pair%s %s: ", done, total,
                        rounds > 1 ? " round " + round : "", m.scenario().title(), m.frameSize(), m.pairs(),
                        m.pairs() == 1 ? "" : "s", BenchReport.ringText(m));
                if (m.ok()) {
                    err.printf(Locale.ROOT, "%s%.3f Mpps, %.2f Gbit/s, CPU ns/packet TX %.1f RX %.1f%s%n", what,
                            m.mpps(), m.gbps(), m.cpuNsPerPacket(Measurement.TX), m.cpuNsPerPacket(Measurement.RX),
                            Double.isNaN(m.roundTripNs()) ? ""
                                    : String.format(Locale.ROOT, ", CPU round trip %.0f ns", m.roundTripNs()));
                } else if (m.status() == Measurement.Status.FAILED) {
                    err.println(what + "FAILED: " + m.note());
                }
                err.flush();
            }

            @Override
            public void note(String line) {
                err.println("mqvirtio bench: " + line);
                err.flush();
            }
        });
        String loadAfter = loadAverage();

        out.println();
        out.println(BenchReport.TABLE_HEADER);
        for (Measurement m : results) {
            out.println(BenchReport.tableRow(m, results));
        }
        if (results.stream().anyMatch(m -> m.negotiated() == null)) {
            out.println(BenchReport.ASKED_LEGEND);
        }
        out.println();
        out.println("CPU ns per packet of each busy thread (sending side | receiving side):");
        for (Measurement m : results) {
            if (m.ok()) {
                out.printf(Locale.ROOT, "  %-14s %5d B %2d pairs %-15s: %s%n", m.scenario().title(), m.frameSize(),
                        m.pairs(), BenchReport.ringText(m), BenchReport.threadLine(m));
            }
        }

        Files.writeString(outDir.resolve("bench.csv"), BenchReport.csv(results));
        Map<String, Object> doc = new LinkedHashMap<>();
        doc.put("tool", "mqvirtio bench");
        doc.put("started", started);
        doc.put("host", Map.of("online_cpus", online, "load_average_before", loadBefore, "load_average_after", loadAfter,
                "java", System.getProperty("java.vm.name") + " " + Runtime.version()));
        Map<String, Object> opts = new LinkedHashMap<>();
        opts.put("scenarios", scenarios.stream().map(Scenario::id).toList());
        opts.put("sizes", sizes);
        opts.put("pairs", pairs);
        opts.put("layout", a.string("layout", "both"));
        opts.put("in_order", a.string("in-order", "on"));
        opts.put("rings", rings.stream().map(RingMode::label).toList());
        opts.put("seconds", seconds);
        opts.put("warmup", warmup);
        opts.put("repeat", repeat);
        opts.put("rounds", rounds);
        opts.put("busy_poll", busyPoll);
        opts.put("poll_us", pollMicros);
        opts.put("sink", sink);
        opts.put("tx_cpus", Arrays.stream(cpus[0]).boxed().toList());
        opts.put("rx_cpus", Arrays.stream(cpus[1]).boxed().toList());
        doc.put("options", opts);
        List<Object> rows = new ArrayList<>();
        for (Measurement m : results) {
            rows.add(json(m, results));
        }
        doc.put("results", rows);
        Files.writeString(outDir.resolve("bench.json"), Json.write(doc) + "\n");
        Path png = outDir.resolve("bench.png");
        try {
            BenchPlot.write(results, String.format(Locale.ROOT, "%s; %s; %s%.1f s per point; CPUs %s; %s sink; load %s",
                    started.substring(0, Math.min(16, started.length())), busyPoll ? "busy-poll" : "notifications",
                    (rounds > 1 ? "best of " + rounds + " rounds, " : "") + (repeat > 1 ? "best of " + repeat + " x " : ""),
                    seconds,
                    cpuText(cpus), sink, loadBefore), png);
            out.println("\nwrote " + outDir.resolve("bench.csv") + ", " + outDir.resolve("bench.json") + ", " + png);
        } catch (Exception | Error e) { // a machine without fonts: the figures are still in the CSV and JSON
            out.println("\nwrote " + outDir.resolve("bench.csv") + ", " + outDir.resolve("bench.json"));
            err.println("mqvirtio bench: no plot: " + e);
        }
        boolean any = results.stream().anyMatch(Measurement::ok);
        return any ? 0 : 1;
    }

    private static Map<String, Object> json(Measurement m, List<Measurement> all) {
        Map<String, Object> r = new LinkedHashMap<>();
        r.put("scenario", m.scenario().id());
        r.put("label", m.scenario().label());
        r.put("frame_bytes", m.frameSize());
        r.put("pairs", m.pairs());
        r.put("ring_asked", m.ring().label());
        // null where no negotiation was seen (the point did not run, or testpmd's log did not say)
        r.put("ring_negotiated", m.negotiated() == null ? null : m.negotiated().label());
        r.put("features", m.negotiated() == null ? null : BenchReport.featuresText(m));
        r.put("status", m.status().name().toLowerCase(Locale.ROOT));
        r.put("note", m.note());
        r.put("mpps", m.mpps());
        r.put("gbps", m.gbps());
        r.put("packets", m.packets());
        r.put("seconds", m.seconds());
        r.put("sender_mpps", m.senderMpps());
        r.put("sender_packets", m.senderPackets());
        r.put("sender_seconds", m.senderSeconds());
        r.put("tx_cpu_ns_per_packet", m.cpuNsPerPacket(Measurement.TX));
        r.put("rx_cpu_ns_per_packet", m.cpuNsPerPacket(Measurement.RX));
        r.put("cores", m.cores());
        r.put("ratio_to_reference", BenchReport.ratio(m, all));
        r.put("median_round_ratio_to_reference", BenchReport.medianRatio(m, all));
        r.put("interval_mpps", m.intervalMpps());
        r.put("round_mpps", m.roundMpps());
        r.put("cpu_round_trip_ns", m.roundTripNs());
        r.put("round_cpu_round_trip_ns", m.roundRoundTripNs());
        List<Object> threads = new ArrayList<>();
        for (Measurement.ThreadCpu t : m.threads()) {
            Map<String, Object> th = new LinkedHashMap<>();
            th.put("side", t.side());
            th.put("name", t.name());
            th.put("cpu_ns", t.cpuNanos());
            th.put("packets", t.packets());
            th.put("ns_per_packet", t.nsPerPacket());
            threads.add(th);
        }
        r.put("threads", threads);
        return r;
    }

    /** "TX:RX" CPU lists ("0:1", "0,1:2,3", "0-1:2-3") or "none". */
    static int[][] parseCpus(String text, int online) {
        if (text.equals("none")) {
            return new int[][] {new int[0], new int[0]};
        }
        String[] sides = text.split(":", -1);
        if (sides.length != 2) {
            throw new Args.UsageException("--cpus needs TX:RX CPU lists such as 0:1 or 0,1:2,3, or none; got '" + text + "'");
        }
        int[][] r = new int[2][];
        for (int s = 0; s < 2; s++) {
            List<Integer> l = new ArrayList<>();
            for (String part : sides[s].split(",")) {
                String p = part.trim();
                try {
                    int dash = p.indexOf('-');
                    int lo = Integer.parseInt(dash < 0 ? p : p.substring(0, dash));
                    int hi = dash < 0 ? lo : Integer.parseInt(p.substring(dash + 1));
                    for (int c = lo; c <= hi; c++) {
                        if (c < 0 || c >= online) {
                            throw new Args.UsageException("--cpus: CPU " + c + " is not online here (0.." + (online - 1) + ")");
                        }
                        l.add(c);
                    }
                } catch (NumberFormatException e) {
                    throw new Args.UsageException("--cpus needs TX:RX CPU lists such as 0:1 or 0,1:2,3, or none; got '"
                            + text + "'");
                }
            }
            if (l.isEmpty()) {
                throw new Args.UsageException("--cpus: the " + (s == 0 ? "TX" : "RX") + " side has no CPU");
            }
            r[s] = l.stream().mapToInt(Integer::intValue).toArray();
        }
        return r;
    }

    private static String cpuText(int[][] cpus) {
        if (cpus[0].length == 0) {
            return "not pinned";
        }
        return "TX " + join(Arrays.stream(cpus[0]).boxed().toList()) + " / RX " + join(Arrays.stream(cpus[1]).boxed().toList());
    }

    /**
     * The grid's ring modes from --layout and --in-order: split, packed or both; on, off or both. Defaults: both
     * layouts, the one everyone compares, with IN_ORDER on, what DPDK's virtio-user and our driver ask by default.
     */
    static List<RingMode> ringModes(Args a) {
        String layout = a.string("layout", "both");
        List<Boolean> packed = switch (layout) {
            case "split" -> List.of(false);
            case "packed" -> List.of(true);
            case "both" -> List.of(false, true);
            default -> throw new Args.UsageException("--layout must be split, packed or both, got '" + layout + "'");
        };
        String inOrder = a.string("in-order", "on");
        List<Boolean> order = switch (inOrder) {
            case "on" -> List.of(true);
            case "off" -> List.of(false);
            case "both" -> List.of(false, true);
            default -> throw new Args.UsageException("--in-order must be on, off or both, got '" + inOrder + "'");
        };
        return RingMode.grid(packed, order);
    }

    private static String labels(List<RingMode> rings) {
        return String.join(",", rings.stream().map(RingMode::label).toList());
    }

    private static String titles(List<Scenario> s) {
        return String.join(", ", s.stream().map(Scenario::title).toList());
    }

    private static String join(List<Integer> l) {
        return String.join(",", l.stream().map(String::valueOf).toList());
    }

    private static String loadAverage() {
        try {
            String[] f = Files.readString(Path.of("/proc/loadavg")).trim().split("\\s+");
            return f[0] + " " + f[1] + " " + f[2];
        } catch (IOException | RuntimeException e) {
            return "?";
        }
    }

    private static int ring(Args a, PrintStream out) throws InterruptedException {
        List<Integer> sizes = a.integers("sizes", "64,1500", 14, 65535);
        int ring = a.integer("ring", 256, 1, 32768);
        if (Integer.bitCount(ring) != 1) { // what a split ring needs; a packed one of the same size compares
            throw new Args.UsageException("--ring must be a power of two, got " + ring);
        }
        List<RingMode> modes = ringModes(a);
        double warmup = a.decimal("warmup", 2, 0, 3600);
        double secs = a.decimal("seconds", 5, 0.1, 3600);
        out.printf("%8s %6s %-15s %10s %9s %10s %14s %14s%n", "frame B", "ring", "layout", "Mpps", "Gbit/s", "ns/pkt",
                "drv CPU ns/pkt", "dev CPU ns/pkt");
        for (RingMode mode : modes) {
            for (int size : sizes) {
                RingBenchmark.Result r = RingBenchmark.run(size, ring, mode, warmup, secs);
                out.printf(Locale.ROOT, "%8d %6d %-15s %10.2f %9.2f %10.1f %14.1f %14.1f%n", size, ring, mode.label(),
                        r.mpps(), r.gbps(), r.nsPerPacket(), r.driverCpuNsPerPacket(), r.deviceCpuNsPerPacket());
            }
        }
        return 0;
    }
}
