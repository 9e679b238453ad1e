package io.mqvirtio.bench;

import java.io.BufferedWriter;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.io.Reader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.Deque;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;

/**
 * One {@code dpdk-testpmd} process, interactive, driven through its stdin (held open: testpmd quits at EOF), with
 * its port counters read on demand ({@code show port stats all}) and its threads' CPU time read from
 * {@code /proc/PID/task/TID/schedstat}. No hugepages ({@code --no-huge -m 512}, its memory is then shareable with
 * a vhost-user peer), no PCI. Its forwarding lcores sit on the CPUs given, one each; the main lcore (it only reads
 * commands) on the first of them; EAL's control threads go where DPDK puts them (the CPUs no lcore uses).
 *
 * <p>The one way the project starts testpmd: the bench, and every real-peer test (through the peer lab), so that a
 * quirk found once (the mbuf pool that must fit {@code -m 512}, stdout that needs line buffering, the runtime
 * directory left behind) is handled once.
 */
public final class Testpmd implements AutoCloseable {
    /** Port 0's counters as testpmd printed them, and when we read them. */
    public record PortStats(long rxPackets, long rxBytes, long txPackets, long txBytes, long nanoTime) {}

    private static final AtomicInteger SEQ = new AtomicInteger();
    private static final Set<Process> LIVE = ConcurrentHashMap.newKeySet();
    private static final Pattern COUNTS = Pattern.compile("(RX|TX)-packets:\\s*(\\d+)\\s+\\S+:\\s*(\\d+)\\s+\\S+-bytes:\\s*(\\d+)");
    /** What DPDK's vhost library logs (VHOST_CONFIG, INFO) when its frontend sets the features. */
    private static final Pattern NEGOTIATED = Pattern.compile("negotiated Virtio features: 0x([0-9a-fA-F]+)");

    static {
        Runtime.getRuntime().addShutdownHook(new Thread(() -> LIVE.forEach(p -> p.destroyForcibly()), "testpmd-reaper"));
    }

    private final Process process;
    private final OutputStream stdin;
    private final String prefix;
    private final Path log;
    private final Thread reader;
    private final BlockingQueue<PortStats> stats = new LinkedBlockingQueue<>();
    private final AtomicInteger prompts = new AtomicInteger();
    private final Deque<String> tail = new ArrayDeque<>();
    private final int forwardingCores;
    private volatile long negotiatedFeatures = -1;

    /**
     * dpdk-testpmd: the system property {@code mqvirtio.testpmd} or $MQV_TESTPMD, else on PATH, else /usr/bin; null if
     * there is none.
     */
    public static Path find() {
        String env = System.getProperty("mqvirtio.testpmd", System.getenv("MQV_TESTPMD"));
        if (env != null && !env.isBlank()) {
            Path p = Path.of(env);
            return Files.isExecutable(p) ? p : null;
        }
        List<String> dirs = new ArrayList<>(List.of(System.getenv().getOrDefault("PATH", "").split(":")));
        dirs.addAll(List.of("/usr/bin", "/usr/local/bin", "/usr/sbin"));
        for (String d : dirs) {
            if (d.isEmpty()) {
                continue;
            }
            Path p = Path.of(d, "dpdk-testpmd");
            if (Files.isExecutable(p)) {
                return p;
            }
        }
        return null;
    }

    /**
     * Starts testpmd and waits for its prompt (its ports are then set up: a virtio-user port has connected and
     * negotiated, a vhost port listens).
     *
     * @param vdev    the one EAL virtual device, e.g. {@code net_vhost0,iface=SOCK,queues=N}
     * @param forward forwarding mode (txonly, rxonly, ...)
     * @param txpkts  txonly frame length, or 0 for testpmd's default
     * @param cpus    CPUs for the forwarding lcores (one lcore each, at most {@code queues}); empty: not pinned
     * @param log     where its output goes
     */
    static Testpmd start(Path bin, String vdev, int queues, String forward, int txpkts, int[] cpus, Path log,
                         double startTimeoutSeconds) throws IOException, InterruptedException {
        return start(bin, vdev, queues, forward, txpkts, cpus, log, startTimeoutSeconds, List.of());
    }

    /**
     * As {@link #start(Path, String, int, String, int, int[], Path, double)}, with more of testpmd's own options
     * after the others (e.g. {@code --port-topology=loop}, {@code --no-flush-rx}).
     */
    public static Testpmd start(Path bin, String vdev, int queues, String forward, int txpkts, int[] cpus, Path log,
                                double startTimeoutSeconds, List<String> more) throws IOException, InterruptedException {
        String prefix = "mqvbench-" + ProcessHandle.current().pid() + "-" + SEQ.incrementAndGet();
        int cores = cpus.length == 0 ? 1 : Math.max(1, Math.min(cpus.length, queues));
        StringBuilder lcores = new StringBuilder();
        String all = "(0-" + (Runtime.getRuntime().availableProcessors() - 1) + ")";
        lcores.append("0@").append(cpus.length == 0 ? all : String.valueOf(cpus[0]));
        for (int i = 0; i < cores; i++) {
            lcores.append(',').append(i + 1).append('@').append(cpus.length == 0 ? all : String.valueOf(cpus[i]));
        }
        List<String> cmd = new ArrayList<>();
        if (Files.isExecutable(Path.of("/usr/bin/setpriv"))) {
            // testpmd busy-polls a core: it must not outlive us, even after a SIGKILL
            cmd.addAll(List.of("/usr/bin/setpriv", "--pdeathsig", "KILL"));
        }
        if (Files.isExecutable(Path.of("/usr/bin/stdbuf"))) {
            // its stdout is a pipe: without line buffering, what `show port stats` prints waits in stdio's buffer
            cmd.addAll(List.of("/usr/bin/stdbuf", "-oL"));
        }
        cmd.addAll(List.of(bin.toString(), "--lcores", lcores.toString(), "--main-lcore", "0", "--no-huge", "-m", "512",
                "--no-pci", "--no-telemetry", "--file-prefix", prefix, "--vdev", vdev, "--", "-i",
                "--rxq=" + queues, "--txq=" + queues, "--nb-cores=" + cores, "--total-num-mbufs=32768",
                "--forward-mode=" + forward));
        if (txpkts > 0) {
            cmd.add("--txpkts=" + txpkts);
        }
        cmd.addAll(more);
        Files.createDirectories(log.toAbsolutePath().getParent());
        Files.writeString(log, String.join(" ", cmd) + "\n");
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        LIVE.add(p);
        Testpmd t = new Testpmd(p, prefix, log, cores);
        try {
            t.awaitPrompt(startTimeoutSeconds);
        } catch (IOException | InterruptedException | RuntimeException e) {
            t.close();
            throw e;
        }
        return t;
    }

    private Testpmd(Process process, String prefix, Path log, int forwardingCores) {
        this.process = process;
        this.stdin = process.getOutputStream();
        this.prefix = prefix;
        this.log = log;
        this.forwardingCores = forwardingCores;
        this.reader = Thread.ofPlatform().name("testpmd-out-" + process.pid()).daemon().start(this::readOutput);
    }

    public long pid() {
        return process.pid();
    }

    public Path log() {
        return log;
    }

    public int forwardingCores() {
        return forwardingCores;
    }

    public boolean isAlive() {
        return process.isAlive();
    }

    /**
     * The virtio features a vhost port's frontend last set, as its log said ("negotiated Virtio features: 0x…");
     * -1 before that, and always for a virtio-user port (it does not say).
     */
    public long negotiatedFeatures() {
        return negotiatedFeatures;
    }

    private void readOutput() {
        try (Reader in = new InputStreamReader(process.getInputStream(), StandardCharsets.UTF_8);
             BufferedWriter out = Files.newBufferedWriter(log, StandardCharsets.UTF_8, java.nio.file.StandardOpenOption.APPEND)) {
            char[] buf = new char[8192];
            StringBuilder line = new StringBuilder();
            boolean inBlock = false;
            long rxp = -1, rxb = -1, txp = -1, txb = -1;
            int n;
            while ((n = in.read(buf)) >= 0) {
                out.write(buf, 0, n);
                out.flush();
                for (int i = 0; i < n; i++) {
                    char c = buf[i];
                    if (c != '\n') {
                        if (c != '\r') {
                            line.append(c);
                        }
                        if (c == ' ' && line.length() >= 9 && line.lastIndexOf("testpmd> ") == line.length() - 9) {
                            prompts.incrementAndGet();
                        }
                        continue;
                    }
                    String l = line.toString();
                    line.setLength(0);
                    synchronized (tail) {
                        tail.addLast(l);
                        if (tail.size() > 40) {
                            tail.removeFirst();
                        }
                    }
                    if (l.contains("negotiated Virtio features")) {
                        Matcher f = NEGOTIATED.matcher(l);
                        if (f.find()) {
                            negotiatedFeatures = Long.parseUnsignedLong(f.group(1), 16);
                        }
                    }
                    if (l.contains("NIC statistics for port")) {
                        inBlock = true;
                        rxp = rxb = txp = txb = -1;
                    } else if (inBlock && l.trim().startsWith("#####")) {
                        inBlock = false;
                        if (rxp >= 0 && txp >= 0) {
                            stats.add(new PortStats(rxp, rxb, txp, txb, System.nanoTime()));
                        }
                    } else if (inBlock) {
                        Matcher m = COUNTS.matcher(l);
                        if (m.find()) {
                            if (m.group(1).equals("RX")) {
                                rxp = Long.parseLong(m.group(2));
                                rxb = Long.parseLong(m.group(4));
                            } else {
                                txp = Long.parseLong(m.group(2));
                                txb = Long.parseLong(m.group(4));
                            }
                        }
                    }
                }
            }
        } catch (IOException e) {
            // the process went away
        }
    }

    /** The last few lines testpmd printed (vhost's message trace left out), for error messages. */
    public String tail() {
        List<String> l = new ArrayList<>();
        synchronized (tail) {
            for (String t : tail) {
                if (!t.startsWith("VHOST_CONFIG") && !t.isBlank()) {
                    l.add("  " + t);
                }
            }
        }
        return String.join("\n", l.subList(Math.max(0, l.size() - 8), l.size()));
    }

    private void awaitPrompt(double seconds) throws IOException, InterruptedException {
        long deadline = System.nanoTime() + (long) (seconds * 1e9);
        while (prompts.get() == 0) {
            if (!process.isAlive()) {
                reader.join(2000);
                throw new IOException("dpdk-testpmd exited with status " + process.exitValue() + " before its prompt (log "
                        + log + "):\n" + tail());
            }
            if (System.nanoTime() > deadline) {
                throw new IOException("dpdk-testpmd showed no prompt within " + seconds + " s (log " + log + "):\n" + tail());
            }
            Thread.sleep(20);
        }
    }

    /** Types one command. */
    public void command(String c) throws IOException {
        if (!process.isAlive()) {
            throw new IOException("dpdk-testpmd has exited (status " + process.exitValue() + ", log " + log + "):\n" + tail());
        }
        stdin.write((c + "\n").getBytes(StandardCharsets.US_ASCII));
        stdin.flush();
    }

    /** Port 0's counters now ({@code show port stats all}). */
    public PortStats portStats() throws IOException, InterruptedException {
        stats.clear();
        command("show port stats all");
        PortStats s = stats.poll(10, TimeUnit.SECONDS);
        if (s == null) {
            throw new IOException("dpdk-testpmd printed no port statistics within 10 s (log " + log + "):\n" + tail());
        }
        return s;
    }

    /**
     * CPU time (ns, user + system) of each of its threads so far, from {@code /proc/PID/task/TID/schedstat}: the
     * forwarding lcores by name ({@code rte-worker-N}), all others together as {@code other}.
     */
    public Map<String, Long> threadCpu() {
        Map<String, Long> m = new LinkedHashMap<>();
        long other = 0;
        Path tasks = Path.of("/proc", String.valueOf(process.pid()), "task");
        try (Stream<Path> s = Files.list(tasks)) {
            for (Path t : s.sorted(Comparator.comparing(Path::toString)).toList()) {
                try {
                    String comm = Files.readString(t.resolve("comm")).trim();
                    long ns = Long.parseLong(Files.readString(t.resolve("schedstat")).trim().split("\\s+")[0]);
                    if (comm.startsWith("rte-worker") || comm.startsWith("lcore-worker")) {
                        m.merge(comm, ns, Long::sum);
                    } else {
                        other += ns;
                    }
                } catch (IOException | RuntimeException e) {
                    // the thread ended meanwhile
                }
            }
        } catch (IOException e) {
            return m;
        }
        m.put("other", other);
        return m;
    }

    /** Stops forwarding and quits; kills it if it does not go; removes its runtime directory. */
    @Override
    public void close() {
        try {
            if (process.isAlive()) {
                try {
                    command("stop");
                    command("quit");
                    stdin.close();
                } catch (IOException ignored) {
                    // already going
                }
                if (!process.waitFor(10, TimeUnit.SECONDS)) {
                    process.destroy();
                    if (!process.waitFor(3, TimeUnit.SECONDS)) {
                        process.destroyForcibly().waitFor(5, TimeUnit.SECONDS);
                    }
                }
            }
            reader.join(2000);
        } catch (InterruptedException e) {
            process.destroyForcibly();
            Thread.currentThread().interrupt();
        } finally {
            LIVE.remove(process);
            deleteTree(Path.of("/var/run/dpdk", prefix));
        }
    }

    private static void deleteTree(Path dir) {
        if (!Files.exists(dir)) {
            return;
        }
        try (Stream<Path> s = Files.walk(dir)) {
            for (Path p : s.sorted(Comparator.reverseOrder()).toList()) {
                Files.deleteIfExists(p);
            }
        } catch (IOException ignored) {
            // best effort: testpmd removes most of it itself
        }
    }
}
