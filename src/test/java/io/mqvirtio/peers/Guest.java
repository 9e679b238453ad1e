package io.mqvirtio.peers;

import static org.assertj.core.api.Assertions.assertThat;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * One QEMU running the project's test guest ({@code scripts/guest/run-guest.sh}: the Debian cloud kernel, our
 * initramfs, one virtio-net-pci NIC on a vhost-user socket, a guest script from {@code scripts/guest/tests}), with
 * its serial console, its QMP monitor and its pid. Made by {@link PeerLab#guest}, which stops it with the lab; the
 * guest's results are the console's {@code MQV-RESULT key=value} lines.
 */
public final class Guest implements AutoCloseable {
    private static final Pattern RESULT = Pattern.compile("MQV-RESULT (\\S+)=(\\S*)");

    private final String name;
    private final Process process;
    private final Path console;
    private final Path out;
    private final Path pidFile;
    private final Qmp qmp;
    private final Integer incomingPort;

    private Guest(String name, Process process, Path console, Path out, Path pidFile, Qmp qmp, Integer incomingPort) {
        this.name = name;
        this.process = process;
        this.console = console;
        this.out = out;
        this.pidFile = pidFile;
        this.qmp = qmp;
        this.incomingPort = incomingPort;
    }

    /** How to start a guest: run-guest.sh's options. */
    public static final class Options {
        private final PeerLab lab;
        private final String name;
        private final List<String> args = new ArrayList<>();
        private final List<String> qemuArgs = new ArrayList<>();
        private String script = "multiqueue.sh";
        private int timeoutSeconds = 300;
        private boolean qmp;
        private Integer incomingPort;

        Options(PeerLab lab, String name) {
            this.lab = lab;
            this.name = name;
        }

        /** The NIC on this vhost-user socket; QEMU connects to the backend listening there. */
        public Options vhostUser(Path sock) {
            return option("--vhost-user", sock.toString());
        }

        /** QEMU listens on the socket ({@code server=on,wait=off}), the backend connects. */
        public Options server() {
            return option("--server");
        }

        /** QEMU's client chardev reconnects after the backend goes. */
        public Options reconnect() {
            return option("--reconnect");
        }

        public Options queues(int pairs) {
            return option("--queues", String.valueOf(pairs));
        }

        public Options smp(int vcpus) {
            return option("--smp", String.valueOf(vcpus));
        }

        /** More virtio-net-pci properties, e.g. {@code packed=on}; null or empty: none. */
        public Options devOpts(String opts) {
            return opts == null || opts.isEmpty() ? this : option("--dev-opts", opts);
        }

        /** The guest test, a file of {@code scripts/guest/tests}. */
        public Options script(String file) {
            this.script = file;
            return this;
        }

        /** {@code mqv.KEY=VALUE} on the kernel command line: the guest script's {@code MQV_KEY}. */
        public Options arg(String key, Object value) {
            return option("--arg", key + "=" + value);
        }

        /** run-guest.sh's overall limit (QEMU is killed then). */
        public Options timeout(int seconds) {
            this.timeoutSeconds = seconds;
            return this;
        }

        /** A QMP monitor, connected before {@link #start} returns. */
        public Options qmp() {
            this.qmp = true;
            return this;
        }

        /**
         * A migration destination: {@code -incoming tcp:127.0.0.1:PORT} on a free port, and {@code -S} (it stays
         * paused once the guest arrived, until {@code cont}). Implies {@link #qmp}.
         */
        public Options incoming() throws IOException {
            try (java.net.ServerSocket s = new java.net.ServerSocket(0)) {
                this.incomingPort = s.getLocalPort();
            }
            qemuArgs.addAll(List.of("-S", "-incoming", "tcp:127.0.0.1:" + incomingPort));
            return qmp();
        }

        private Options option(String... o) {
            args.addAll(List.of(o));
            return this;
        }

        /** Starts QEMU (and connects to its monitor when asked); the lab stops it at the latest. */
        public Guest start() throws Exception {
            Peers.require("qemu-system-x86_64", "QEMU");
            Path dir = lab.dir();
            Path console = dir.resolve(name + ".console.log");
            Path out = dir.resolve(name + ".run-guest.out");
            Path pid = dir.resolve(name + ".pid");
            Path qmpSock = dir.resolve(name + ".qmp");
            List<String> cmd = new ArrayList<>(List.of(lab.repo().resolve("scripts/guest/run-guest.sh").toString(),
                    "--script", lab.repo().resolve("scripts/guest/tests").resolve(script).toString(),
                    "--log", console.toString(), "--timeout", String.valueOf(timeoutSeconds), "--pidfile", pid.toString()));
            if (qmp) {
                cmd.addAll(List.of("--qmp", qmpSock.toString()));
            }
            cmd.addAll(args);
            if (!qemuArgs.isEmpty()) {
                cmd.add("--");
                cmd.addAll(qemuArgs);
            }
            Process p = new ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(out.toFile())
                    .directory(lab.repo().toFile()).start();
            Guest g;
            try {
                g = new Guest(name, p, console, out, pid, qmp ? Qmp.connect(qmpSock, p, 60_000) : null, incomingPort);
            } catch (Exception | Error e) {
                Peers.stop(p, 5000);
                throw e;
            }
            return lab.own(g);
        }
    }

    public String name() {
        return name;
    }

    public Process process() {
        return process;
    }

    /** The serial console's log. */
    public Path console() {
        return console;
    }

    /** Its monitor (only if asked for with {@link Options#qmp}). */
    public Qmp qmp() {
        if (qmp == null) {
            throw new IllegalStateException(name + " was started without a QMP monitor");
        }
        return qmp;
    }

    /** The port a migration destination listens on ({@link Options#incoming}). */
    public int incomingPort() {
        if (incomingPort == null) {
            throw new IllegalStateException(name + " is not a migration destination");
        }
        return incomingPort;
    }

    /** QEMU's own pid (not run-guest.sh's), from its pid file. */
    public long qemuPid() throws IOException {
        return Long.parseLong(Files.readString(pidFile).trim());
    }

    /** Waits until the console shows {@code marker}; fails when QEMU exits first or after {@code seconds}. */
    public void awaitLine(String marker, int seconds) throws IOException, InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds);
        while (!(Files.exists(console) && Files.readString(console).contains(marker))) {
            assertThat(process.isAlive()).as("%s runs (waiting for \"%s\")%s", name, marker, context()).isTrue();
            assertThat(System.nanoTime()).as("\"%s\" within %d s%s", marker, seconds, context()).isLessThan(deadline);
            Thread.sleep(200);
        }
    }

    /** Waits for QEMU to exit (the guest powered off, or the timeout hit); true if it did within {@code seconds}. */
    public boolean awaitExit(int seconds) throws InterruptedException {
        return process.waitFor(seconds, TimeUnit.SECONDS);
    }

    /** The whole console so far. */
    public String consoleText() throws IOException {
        return Files.exists(console) ? Files.readString(console) : "";
    }

    /** The guest's {@code MQV-RESULT key=value} lines so far. */
    public Map<String, String> results() throws IOException {
        return results(consoleText());
    }

    /** The {@code MQV-RESULT key=value} lines of a console log, in order (a later value of a key wins). */
    public static Map<String, String> results(String console) {
        Map<String, String> r = new LinkedHashMap<>();
        Matcher m = RESULT.matcher(console);
        while (m.find()) {
            r.put(m.group(1), m.group(2));
        }
        return r;
    }

    /** The tails of the console and of run-guest.sh's output, for assertion messages. */
    public String context() {
        return "\n--- " + name + " console (tail) ---\n" + Peers.tail(console, 60) + "\n--- run-guest ---\n"
                + Peers.tail(out, 10);
    }

    /** Closes the monitor and stops QEMU (TERM, then KILL after 5 s). */
    @Override
    public void close() {
        if (qmp != null) {
            qmp.close();
        }
        Peers.stop(process, 5000);
    }
}
