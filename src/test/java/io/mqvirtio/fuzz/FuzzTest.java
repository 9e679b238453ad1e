package io.mqvirtio.fuzz;

import static org.assertj.core.api.Assertions.assertThat;

import java.io.File;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;

/**
 * Runs the coverage-guided fuzz targets with Jazzer (libFuzzer inside the JVM), each in a child JVM of its own (the
 * Jazzer agent instruments classes as they load, and one process fuzzes one target). By default this is the short
 * run every build does: a fixed seed, {@value #CI_SECONDS} seconds per target, all targets at once. A finding
 * (an oracle failure, an unexpected exception, a JVM crash, a timeout) fails the test with Jazzer's report; the
 * crashing input and a Java reproducer are left in {@code target/fuzz/<target>/}.
 *
 * <p>System properties (docs/fuzzing.md has the long run's command):
 * <ul>
 *   <li>{@code fuzz.targets}: comma-separated subset of {@code ring,packed,session,driver} (default all)</li>
 *   <li>{@code fuzz.seconds}: time limit per target, 0 for none (default {@value #CI_SECONDS})</li>
 *   <li>{@code fuzz.runs}: number of inputs per target, 0 for no limit (default 0)</li>
 *   <li>{@code fuzz.seed}: libFuzzer's seed (default 1)</li>
 *   <li>{@code fuzz.coverage}: write JaCoCo's summary of what the run covered to {@code target/fuzz/<target>.coverage.txt}</li>
 * </ul>
 */
class FuzzTest {
    static final int CI_SECONDS = 8;
    static final Path OUT = Path.of("target", "fuzz");

    /** A fuzz target and the longest input it gets (a session needs only a few messages after its prefix). */
    record Target(String name, Class<?> fuzzer, int maxLen) {}

    static final List<Target> TARGETS = List.of(new Target("ring", RingFuzzer.class, 4096),
            new Target("packed", PackedRingFuzzer.class, 4096), new Target("session", SessionFuzzer.class, 256),
            new Target("driver", DriverRingFuzzer.class, 4096));

    record Result(Target target, int exitCode, long runs, long seconds, String cov, Path log) {}

    @Test
    void fuzzTargetsFindNothing() throws Exception {
        List<String> wanted = Arrays.asList(System.getProperty("fuzz.targets", "ring,packed,session,driver").split(","));
        long seconds = Long.getLong("fuzz.seconds", CI_SECONDS);
        long runs = Long.getLong("fuzz.runs", 0);
        long seed = Long.getLong("fuzz.seed", 1);
        boolean coverage = Boolean.getBoolean("fuzz.coverage");
        Files.createDirectories(OUT);

        List<Process> processes = new ArrayList<>();
        List<Target> started = new ArrayList<>();
        for (Target t : TARGETS) {
            if (wanted.contains(t.name())) {
                processes.add(start(t, seconds, runs, seed, coverage));
                started.add(t);
            }
        }
        assertThat(started).as("fuzz.targets names none of %s", TARGETS).isNotEmpty();
        List<Result> results = new ArrayList<>();
        for (int i = 0; i < processes.size(); i++) {
            Process p = processes.get(i);
            // A generous bound on top of the fuzzing time: JVM start, instrumentation, and the final corpus write.
            if (seconds > 0 && runs == 0 && !p.waitFor(seconds + 240, TimeUnit.SECONDS)) {
                p.descendants().forEach(ProcessHandle::destroyForcibly); // the fuzzer's JVM under the shell
                p.destroyForcibly();
            }
            int rc = p.waitFor();
            results.add(result(started.get(i), rc));
        }
        for (Result r : results) {
            System.out.printf("fuzz %s: %d inputs in %d s (%s), exit %d, log %s%n", r.target().name(), r.runs(), r.seconds(),
                    r.cov(), r.exitCode(), r.log());
        }
        for (Result r : results) {
            assertThat(r.exitCode()).as("fuzz target %s (log %s):%n%s", r.target().name(), r.log(), tail(r.log(), 60))
                    .isZero();
            assertThat(r.runs()).as("inputs fuzz target %s ran", r.target().name()).isPositive();
        }
    }

    private static Process start(Target t, long seconds, long runs, long seed, boolean coverage) throws IOException {
        Path dir = OUT.resolve(t.name());
        Path corpus = dir.resolve("corpus");
        Files.createDirectories(corpus);
        List<String> cmd = new ArrayList<>(List.of(
                // Through a shell that forks the fuzzer: libFuzzer's -rss_limit_mb reads the peak RSS of its own
                // process (getrusage), and Linux carries that peak across exec, so a fuzzer spawned straight from
                // this JVM starts with the test JVM's peak (5.5 GB late in the full suite) and stops at once with
                // "out-of-memory". A forked child starts its count afresh.
                "/bin/sh", "-c", "\"$@\" & wait $!", "fuzzer",
                Path.of(System.getProperty("java.home"), "bin", "java").toString(),
                // the same native-access rules as the test suite; Jazzer's own native code is on the class path too
                "--enable-native-access=ALL-UNNAMED", "--illegal-native-access=deny",
                "-XX:+EnableDynamicAgentLoading", "-Xss2m", "-Xmx1g",
                "-cp", fuzzClassPath(),
                "com.code_intelligence.jazzer.Jazzer",
                "--target_class=" + t.fuzzer().getName(),
                // coverage and comparison feedback from the code under test only, not from the harness
                "--instrumentation_includes=io.mqvirtio.**",
                "--instrumentation_excludes=io.mqvirtio.fuzz.**",
                "--custom_hook_includes=io.mqvirtio.**",
                "--reproducer_path=" + dir,
                "-artifact_prefix=" + dir + File.separator,
                "-seed=" + seed,
                "-timeout=20",          // a single input that runs this long is a hang: a finding
                "-rss_limit_mb=4096",
                "-max_len=" + t.maxLen(),
                "-print_final_stats=1"));
        if (seconds > 0) {
            cmd.add("-max_total_time=" + seconds);
        }
        if (runs > 0) {
            cmd.add("-runs=" + runs);
        }
        if (coverage) {
            cmd.add("--coverage_report=" + OUT.resolve(t.name() + ".coverage.txt"));
        }
        cmd.add(corpus.toString());
        Path seeds = Path.of("src", "test", "resources", "fuzz", t.name());
        if (Files.isDirectory(seeds)) {
            cmd.add(seeds.toString()); // read-only: new inputs go to the first directory
        }
        Path log = OUT.resolve(t.name() + ".log");
        Files.writeString(OUT.resolve(t.name() + ".cmd"), String.join(" ", cmd) + "\n");
        return new ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(log.toFile()).start();
    }

    /** The test class path minus what the targets do not need (Jazzer scans all of it for hooks at start). */
    static String fuzzClassPath() {
        String cp = System.getProperty("java.class.path");
        List<String> keep = new ArrayList<>();
        for (String e : cp.split(File.pathSeparator)) {
            if (Files.isDirectory(Path.of(e)) || e.contains("code-intelligence")) {
                keep.add(e);
            }
        }
        assertThat(String.join(" ", keep)).as("test class path %s", cp).contains("jazzer").contains("test-classes");
        return String.join(File.pathSeparator, keep);
    }

    private static final Pattern DONE = Pattern.compile("Done (\\d+) runs in (\\d+) second");
    private static final Pattern COV = Pattern.compile("cov: (\\d+) ft: (\\d+) corp: (\\d+)");

    private static Result result(Target t, int rc) throws IOException {
        Path log = OUT.resolve(t.name() + ".log");
        String text = Files.readString(log);
        long runs = 0, secs = 0;
        Matcher m = DONE.matcher(text);
        while (m.find()) {
            runs = Long.parseLong(m.group(1));
            secs = Long.parseLong(m.group(2));
        }
        String cov = "no coverage line";
        Matcher c = COV.matcher(text);
        while (c.find()) {
            cov = "cov " + c.group(1) + ", features " + c.group(2) + ", corpus " + c.group(3);
        }
        return new Result(t, rc, runs, secs, cov, log);
    }

    private static String tail(Path log, int lines) throws IOException {
        List<String> all = Files.readAllLines(log);
        return String.join("\n", all.subList(Math.max(0, all.size() - lines), all.size()));
    }
}
