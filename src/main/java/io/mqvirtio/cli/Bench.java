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
import picocli.CommandLine.Option;

/**
 * {@code mqvirtio bench}: the scenario benchmark (our driver and backend against DPDK's testpmd, the kernel's TAP),
 * printed as a table and written as CSV, JSON and a PNG plot; {@code mqvirtio bench ring}: the ring benchmark.
 */
public final class Bench {
    private Bench() {}

    /** {@code mqvirtio bench ARGS…} with Main's error handling: exit status 0, 1 (failure) or 2 (usage). */
    public static int command(String[] argv, PrintStream out, PrintStream err) {
        String[] all = new String[argv.length + 1];
        all[0] = "bench";
        System.arraycopy(argv, 0, all, 1, argv.length);
        return Main.run(all, out, err);
    }

    @picocli.CommandLine.Command(name = "bench", mixinStandardHelpOptions = true, versionProvider = Main.Version.class,
            subcommands = RingCommand.class, sortOptions = false,
            description = {"Our driver, our backend and DPDK testpmd against each other: packets per second, Gbit/s, CPU "
                    + "time per packet of every busy thread, ratio to the reference (\"vs ref\": 3 for 1, 2 and 4; 7 for 5 and 9; "
                    + "8 for 6, 10 and 11). Writes bench.csv, bench.json and bench.png."})
    static final class Command extends Streams implements java.util.concurrent.Callable<Integer> {
        @Option(names = "--scenarios", paramLabel = "LIST", defaultValue = "all", description = {
            "1 ours->ours (our driver -> our backend's sink), 2 dpdk->ours (testpmd virtio-user txonly -> our backend), "
                    + "3 dpdk->dpdk (virtio-user -> testpmd vhost rxonly: the reference), 4 ours->dpdk (our driver -> "
                    + "testpmd vhost), 5 ours->tap (our driver -> our backend -> a multiqueue TAP in a namespace of its "
                    + "own; root), 6 tap->ours (packet sockets on the host side of the TAP -> our backend -> our driver; "
                    + "root), 7 writev->tap and 8 tap->readv (the syscall-bound loops 5 and 6 are compared with: one "
                    + "writev / readv per frame on each TAP queue fd; root), 9 uring->tap (7's writes, 32 per io_uring_enter: "
                    + "what batching the system calls buys; root), 10 tap->uring (8's reads, up to 32 per io_uring_enter; "
                    + "root), 11 tap->readv-ring (8 reading into the next of 256 buffers that a thread on the driver's CPU "
                    + "copies out, as 6's frames are: the kernel's cost with 6's memory traffic; root); default "
                    + "${DEFAULT-VALUE}"})
        String scenarios;

        @Option(names = "--sizes", paramLabel = "LIST", split = ",", hideParamSyntax = true, defaultValue = "64,512,1500",
                description = "frame sizes in bytes (default ${DEFAULT-VALUE})")
        List<Integer> sizes;

        @Option(names = "--pairs", paramLabel = "LIST", split = ",", hideParamSyntax = true, defaultValue = "1,2,4",
                description = "queue pairs (default ${DEFAULT-VALUE})")
        List<Integer> pairs;

        @Option(names = "--layout", paramLabel = "L", defaultValue = "both", description = "the virtqueue layout both "
                + "sides of every scenario are asked for: split, packed or both (default ${DEFAULT-VALUE}): our driver's "
                + "features, virtio-user's packed_vq=0|1; our backend and testpmd's vhost offer both and take what their "
                + "frontend asks")
        String layout;

        @Option(names = "--in-order", paramLabel = "O", defaultValue = "on", description = "VIRTIO_F_IN_ORDER, asked of "
                + "both sides likewise: on, off or both (default ${DEFAULT-VALUE}: virtio-user's in_order=1|0, our "
                + "driver's features). Every scenario runs in each layout and IN_ORDER choice; each row says what its "
                + "connection negotiated (\"ring\": split, split+inorder, packed, packed+inorder), and its reference (3) "
                + "is the one that negotiated the same")
        String inOrder;

        @Option(names = "--seconds", paramLabel = "S", defaultValue = "5",
                description = "measured time per point (default ${DEFAULT-VALUE})")
        double seconds;

        @Option(names = "--warmup", paramLabel = "S", defaultValue = "2",
                description = "traffic before each point's first measured interval (default ${DEFAULT-VALUE})")
        double warmup;

        @Option(names = "--repeat", paramLabel = "N", defaultValue = "1", description = "measured intervals per point, "
                + "back to back; the best is reported, all are in the JSON (default ${DEFAULT-VALUE}; on a shared "
                + "machine, 3 to 5 find its quieter moments)")
        int repeat;

        @Option(names = "--rounds", paramLabel = "N", defaultValue = "1", description = "measure the whole grid N times, "
                + "round after round, each point set up afresh; a point is its best round, and \"med ref\" is the median "
                + "over the rounds of its ratio to the reference of the same round (default ${DEFAULT-VALUE}; on a "
                + "machine whose speed drifts, 5 or more)")
        int rounds;

        @Option(names = "--busy-poll", description = "our backend's workers poll their rings (default: they sleep until "
                + "kicked)")
        boolean busyPoll;

        @Option(names = "--poll-us", paramLabel = "N", defaultValue = "0", description = "without --busy-poll: our "
                + "workers poll N µs more after frames moved before they sleep (serve --poll-us); default ${DEFAULT-VALUE}")
        int pollMicros;

        @Option(names = "--cpus", paramLabel = "TX:RX", description = "CPU lists for the sending and the receiving "
                + "side's busy threads, e.g. 0:1 or 0,1:2,3 (thread i of a side on entry i mod length; testpmd gets one "
                + "forwarding lcore per entry); none: no pinning (default 0:1 with two CPUs or more)")
        String cpuText;

        @Option(names = "--sink", paramLabel = "drop|copy", defaultValue = "drop", description = "our backend's sink "
                + "drops frames untouched, or copies each out of guest memory as DPDK's vhost does into an mbuf "
                + "(default ${DEFAULT-VALUE})")
        String sink;

        @Option(names = "--out", paramLabel = "DIR", defaultValue = "bench-results", description = "where bench.csv, "
                + "bench.json, bench.png and testpmd logs go (default ${DEFAULT-VALUE})")
        Path outDir;

        @Option(names = "--ab", paramLabel = "NAME", description = "paired windows: turn the data path's experiment NAME "
                + "off and on in turn, in windows of --ab-window S, over each point's --seconds x --repeat; each point "
                + "tells the median on/off ratio of neighbouring windows (names: see docs/performance.md, \"Paired "
                + "windows\")")
        String abName;

        @Option(names = "--ab-window", paramLabel = "S", defaultValue = "0.5",
                description = "the windows of --ab (default ${DEFAULT-VALUE})")
        double abWindow;

        @Override
        public Integer call() throws IOException, InterruptedException {
            return run(this, out, err);
        }
    }

    @picocli.CommandLine.Command(name = "ring", mixinStandardHelpOptions = true, versionProvider = Main.Version.class,
            description = "The ring benchmark: a driver thread and a device thread on one ring, in one process.")
    static final class RingCommand extends Streams implements java.util.concurrent.Callable<Integer> {
        @Option(names = "--sizes", paramLabel = "LIST", split = ",", hideParamSyntax = true, defaultValue = "64,1500",
                description = "frame sizes in bytes (default ${DEFAULT-VALUE})")
        List<Integer> sizes;

        @Option(names = "--ring", paramLabel = "N", defaultValue = "256",
                description = "ring size, a power of two (default ${DEFAULT-VALUE})")
        int ring;

        @Option(names = "--layout", paramLabel = "L", defaultValue = "both",
                description = "split, packed or both (default ${DEFAULT-VALUE})")
        String layout;

        @Option(names = "--in-order", paramLabel = "O", defaultValue = "on",
                description = "on, off or both (default ${DEFAULT-VALUE})")
        String inOrder;

        @Option(names = "--seconds", paramLabel = "S", defaultValue = "5",
                description = "measured time per size (default ${DEFAULT-VALUE})")
        double seconds;

        @Option(names = "--warmup", paramLabel = "S", defaultValue = "2",
                description = "warm-up per size (default ${DEFAULT-VALUE})")
        double warmup;

        @Override
        public Integer call() throws InterruptedException {
            return ring(this, out);
        }
    }

    static int run(Command a, PrintStream out, PrintStream err) throws IOException, InterruptedException {
        List<Scenario> scenarios;
        try {
            scenarios = Scenario.parseList(a.scenarios);
        } catch (IllegalArgumentException e) {
            throw new UsageException("--scenarios: " + e.getMessage());
        }
        List<Integer> sizes = Check.each("--sizes", a.sizes, 60, 1518);
        List<Integer> pairs = Check.each("--pairs", a.pairs, 1, 16);
        List<RingMode> rings = ringModes(a.layout, a.inOrder);
        double seconds = Check.range("--seconds", a.seconds, 0.05, 3600);
        double warmup = Check.range("--warmup", a.warmup, 0, 3600);
        int repeat = Check.range("--repeat", a.repeat, 1, 1000);
        int rounds = Check.range("--rounds", a.rounds, 1, 1000);
        boolean busyPoll = a.busyPoll;
        int pollMicros = Check.range("--poll-us", a.pollMicros, 0, 1_000_000);
        String sink = Check.oneOf("--sink", a.sink, "drop", "copy");
        Experiment ab = null;
        if (a.abName != null) {
            try {
                ab = Experiment.named(a.abName);
            } catch (IllegalArgumentException e) {
                throw new UsageException("--ab: " + e.getMessage());
            }
        }
        double abWindow = Check.range("--ab-window", a.abWindow, 0.05, 60);
        int online = Affinity.onlineCpus();
        int[][] cpus = parseCpus(a.cpuText != null ? a.cpuText : online >= 2 ? "0:1" : "none", online);

        Path outDir = a.outDir;
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
        if (rounds > 1) {
            out.println(BenchReport.SAME_SPEED_LEGEND);
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
        opts.put("layout", a.layout);
        opts.put("in_order", a.inOrder);
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
        r.put("median_round_ratio_same_speed", BenchReport.sameSpeedMedianRatio(m, all));
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
            throw new UsageException("--cpus needs TX:RX CPU lists such as 0:1 or 0,1:2,3, or none; got '" + text + "'");
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
                            throw new UsageException("--cpus: CPU " + c + " is not online here (0.." + (online - 1) + ")");
                        }
                        l.add(c);
                    }
                } catch (NumberFormatException e) {
                    throw new UsageException("--cpus needs TX:RX CPU lists such as 0:1 or 0,1:2,3, or none; got '"
                            + text + "'");
                }
            }
            if (l.isEmpty()) {
                throw new UsageException("--cpus: the " + (s == 0 ? "TX" : "RX") + " side has no CPU");
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
    static List<RingMode> ringModes(String layout, String inOrder) {
        List<Boolean> packed = switch (Check.oneOf("--layout", layout, "split", "packed", "both")) {
            case "split" -> List.of(false);
            case "packed" -> List.of(true);
            default -> List.of(false, true);
        };
        List<Boolean> order = switch (Check.oneOf("--in-order", inOrder, "on", "off", "both")) {
            case "on" -> List.of(true);
            case "off" -> List.of(false);
            default -> List.of(false, true);
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

    private static int ring(RingCommand a, PrintStream out) throws InterruptedException {
        List<Integer> sizes = Check.each("--sizes", a.sizes, 14, 65535);
        int ring = Check.range("--ring", a.ring, 1, 32768);
        if (Integer.bitCount(ring) != 1) { // what a split ring needs; a packed one of the same size compares
            throw new UsageException("--ring must be a power of two, got " + ring);
        }
        List<RingMode> modes = ringModes(a.layout, a.inOrder);
        double warmup = Check.range("--warmup", a.warmup, 0, 3600);
        double secs = Check.range("--seconds", a.seconds, 0.1, 3600);
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
