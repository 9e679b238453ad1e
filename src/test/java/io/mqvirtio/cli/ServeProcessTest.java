package io.mqvirtio.cli;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.linux.TestNetns;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code mqvirtio serve} as a user runs it: the launcher's jar in a process of its own. SIGTERM and SIGINT stop it
 * with status 0 and no socket file left; bad command lines are one clear line and status 2 (usage) or 1 (the system
 * refused), never a stack trace; {@code --tap} joins an existing multiqueue TAP and leaves it in place, or creates
 * one that is gone after exit, inside a network namespace this test creates; {@code --metrics} is read from outside
 * the process, by this test and by {@code mqvirtio stats} in another process.
 */
class ServeProcessTest {
    static final long START_MS = 30_000;

    @TempDir
    Path dir;

    @Test
    @Timeout(120)
    void sigtermAndSigintExitZeroAndRemoveTheSocket() throws Exception {
        for (String signal : List.of("TERM", "INT")) {
            Path sock = dir.resolve(signal.toLowerCase() + ".sock");
            List<String> cmd = new ArrayList<>();
            // A process started in the background inherits an ignored SIGINT (shells do that to background jobs),
            // and then the JVM, rightly, leaves it ignored: give this one the default, as a terminal's would.
            cmd.addAll(List.of("env", "--default-signal=INT"));
            cmd.addAll(Launcher.command("serve", "--socket-path", sock.toString(), "--queues", "2", "--loopback"));
            try (Launcher.Run r = Launcher.start(dir, "serve-" + signal, cmd)) {
                r.awaitErr("listening on " + java.util.regex.Pattern.quote(sock.toString()), START_MS);
                assertThat(sock).exists();
                assertThat(PosixFilePermissions.toString(Files.getPosixFilePermissions(sock, LinkOption.NOFOLLOW_LINKS)))
                        .isEqualTo("rw-------");
                if (signal.equals("TERM")) {
                    r.process().destroy(); // SIGTERM
                } else {
                    kill("INT", r.process().pid());
                }
                int rc = r.exit(15_000);
                String err = r.stderr();
                assertThat(rc).as("exit status after SIG%s; stderr:%n%s", signal, err).isZero();
                assertThat(sock).as("socket file after SIG%s", signal).doesNotExist();
                assertThat(err).contains("SIG" + signal + ": stopping").contains("stopped (SIG" + signal + ")")
                        .doesNotContain("\tat ").doesNotContain("Exception");
            }
        }
    }

    /**
     * SIGHUP, SIGUSR1 and SIGUSR2 (a terminal that hangs up, a {@code kill -HUP} or {@code -USR1} meant to make a daemon
     * reload or reopen its logs) are logged and serve goes on serving; SIGTERM then stops it as always. Before, the
     * JVM's default ended serve with status 128+signal, and every VM's network with it.
     */
    @Test
    @Timeout(120)
    void sighupLeavesServeServing() throws Exception {
        Path sock = dir.resolve("hup.sock");
        try (Launcher.Run r = Launcher.start(dir, "serve-HUP",
                Launcher.command("serve", "--socket-path", sock.toString(), "--queues", "1", "--loopback"))) {
            r.awaitErr("listening on " + java.util.regex.Pattern.quote(sock.toString()), START_MS);
            for (String signal : List.of("HUP", "USR1", "USR2")) {
                kill(signal, r.process().pid());
                r.awaitErr("SIG" + signal + ": serve has nothing to reload", 10_000);
            }
            Thread.sleep(500);
            assertThat(r.process().isAlive()).as("serve after SIGHUP; stderr:%n%s", r.stderr()).isTrue();
            assertThat(sock).exists();
            try (io.mqvirtio.net.NetDriver d = io.mqvirtio.net.NetDriver.connect(sock,
                    io.mqvirtio.net.NetDriver.Options.pairs(1))) {
                assertThat(d.maxPairs()).as("a frontend served after SIGHUP").isEqualTo(1);
            }
            r.process().destroy(); // SIGTERM
            assertThat(r.exit(15_000)).as("exit status after SIGTERM; stderr:%n%s", r.stderr()).isZero();
            assertThat(sock).doesNotExist();
        }
    }

    @Test
    @Timeout(120)
    void badCommandLinesAreOneLineErrors() throws Exception {
        Path sock = dir.resolve("x.sock");
        Path file = Files.writeString(dir.resolve("not-a-socket"), "x");
        record Case(int rc, String message, String... args) {}
        List<Case> cases = List.of(
                new Case(2, "serve needs --socket-path PATH", "serve", "--queues", "2", "--loopback"),
                new Case(2, "serve needs exactly one backend: --tap NAME or --loopback", "serve", "--socket-path",
                        sock.toString()),
                new Case(2, "serve needs exactly one backend", "serve", "--socket-path", sock.toString(), "--loopback",
                        "--tap", "mqv0"),
                new Case(2, "--queues must be in 1..256, got 0", "serve", "--socket-path", sock.toString(), "--queues",
                        "0", "--loopback"),
                new Case(2, "--queues must be in 1..256, got 257", "serve", "--socket-path", sock.toString(),
                        "--queues", "257", "--loopback"),
                new Case(2, "Invalid value for option '--queues': 'four' is not an int", "serve", "--socket-path", sock.toString(),
                        "--queues", "four", "--loopback"),
                new Case(2, "--tap: an interface name has at most 15 characters", "serve", "--socket-path",
                        sock.toString(), "--tap", "a-name-too-long-for-linux"),
                new Case(2, "--tap: an interface name is printable ASCII without blanks", "serve", "--socket-path",
                        sock.toString(), "--tap", "bad name"),
                new Case(2, "--tap: an interface name is printable ASCII without blanks", "serve", "--socket-path",
                        sock.toString(), "--tap", "a/b"),
                new Case(2, "--tap: \"..\" is not an interface name", "serve", "--socket-path", sock.toString(),
                        "--tap", ".."),
                new Case(2, "--metrics: 0.0.0.0 is not a loopback address", "serve", "--socket-path", sock.toString(),
                        "--loopback", "--metrics", "0.0.0.0:9100"),
                new Case(2, "unknown option --queue (did you mean --queues?)", "serve", "--socket-path", sock.toString(), "--queue", "2"),
                new Case(2, "--poll-us must be in 0..1000000, got 2000000", "serve", "--socket-path", sock.toString(),
                        "--loopback", "--poll-us", "2000000"),
                new Case(2, "--vm socket-path=" + sock + ",loopback,poll-us=x: Invalid value for option '--poll-us': 'x' is not an int", "serve",
                        "--vm", "socket-path=" + sock + ",loopback,poll-us=x"),
                new Case(2, "--tap-tx is auto, io_uring or writev, not 'sendmmsg'", "serve", "--socket-path",
                        sock.toString(), "--tap", "mqv0", "--tap-tx", "sendmmsg"),
                new Case(2, "--tap-tx goes with --tap", "serve", "--socket-path", sock.toString(), "--loopback",
                        "--tap-tx", "writev"),
                new Case(1, "exists and is not a socket", "serve", "--socket-path", file.toString(), "--loopback"),
                new Case(1, "x.sock: the directory " + dir.resolve("no/such/dir") + " does not exist", "serve", "--socket-path",
                        dir.resolve("no/such/dir/x.sock").toString(), "--loopback"));
        List<Launcher.Run> runs = new ArrayList<>();
        try {
            for (int i = 0; i < cases.size(); i++) {
                runs.add(Launcher.start(dir, "case" + i, Launcher.command(cases.get(i).args())));
            }
            for (int i = 0; i < cases.size(); i++) {
                Case c = cases.get(i);
                Launcher.Run r = runs.get(i);
                int rc = r.exit(60_000);
                String err = r.stderr();
                assertThat(rc).as("%s%nstderr: %s", String.join(" ", c.args()), err).isEqualTo(c.rc());
                assertThat(err).as(String.join(" ", c.args())).contains(c.message())
                        .doesNotContain("\tat ").doesNotContain("Exception");
                if (c.rc() == 2) {
                    assertThat(err).startsWith("mqvirtio: "); // refused before anything started or logged
                }
                // the first line says it all; a usage error adds where to read more
                assertThat(err.lines().filter(l -> l.startsWith("mqvirtio: ")).count()).isEqualTo(1);
            }
        } finally {
            runs.forEach(Launcher.Run::close);
        }
        assertThat(sock).doesNotExist();
        assertThat(file).hasContent("x");
    }

    @Test
    @Timeout(120)
    void existingTapIsUsedAndKeptCreatedTapIsRemoved() throws Exception {
        try (TestNetns ns = TestNetns.create()) {
            String existing = tapName();
            ns.ip("tuntap", "add", "dev", existing, "mode", "tap", "multi_queue");
            assertThat(devices(ns)).contains(existing);

            Run run = serveTap(ns, existing, 4);
            try (Launcher.Run r = run.run()) {
                r.awaitErr("listening on ", START_MS);
                assertThat(r.stderr()).contains("tap " + existing + ": 4 queues opened on an existing device");
                assertThat(tunFds(r.process().pid())).as("TAP queue fds held").isEqualTo(4);
                int flags = Integer.decode(ns.exec("cat", "/sys/class/net/" + existing + "/tun_flags"));
                assertThat(flags & 0x0100).as("IFF_MULTI_QUEUE").isNotZero();
                assertThat(flags & 0x4000).as("IFF_VNET_HDR, set by our queues").isNotZero();
                assertThat(Path.of("/sys/class/net", existing)).as("nothing in the host's namespace").doesNotExist();
                r.process().destroy();
                assertThat(r.exit(15_000)).as(r.stderr()).isZero();
                assertThat(r.stderr()).contains("queues closed (the device stays)").contains("stopped (SIGTERM)");
            }
            assertThat(run.sock()).doesNotExist();
            assertThat(devices(ns)).as("an existing TAP outlives mqvirtio").contains(existing);
            assertThat(Integer.decode(ns.exec("cat", "/sys/class/net/" + existing + "/tun_flags")) & 0x0800)
                    .as("still persistent").isNotZero();

            String created = tapName();
            Run run2 = serveTap(ns, created, 2);
            try (Launcher.Run r = run2.run()) {
                r.awaitErr("listening on ", START_MS);
                assertThat(r.stderr()).contains("tap " + created + ": 2 queues opened on a new device");
                assertThat(devices(ns)).contains(created);
                assertThat(tunFds(r.process().pid())).isEqualTo(2);
                int flags = Integer.decode(ns.exec("cat", "/sys/class/net/" + created + "/tun_flags"));
                assertThat(flags & 0x0800).as("not persistent").isZero();
                assertThat(Path.of("/sys/class/net", created)).doesNotExist();
                r.process().destroy();
                assertThat(r.exit(15_000)).as(r.stderr()).isZero();
                assertThat(r.stderr()).contains("the device we created goes with its last queue");
            }
            assertThat(run2.sock()).doesNotExist();
            assertThat(eventually(() -> !devices(ns).contains(created))).as("the created TAP is gone").isTrue();
            assertThat(devices(ns)).contains(existing);
        }
    }

    @Test
    @Timeout(120)
    void namesThatAreNotMultiqueueTapsAreRefused() throws Exception {
        try (TestNetns ns = TestNetns.create()) {
            String single = tapName();
            ns.ip("tuntap", "add", "dev", single, "mode", "tap"); // no multi_queue
            for (String name : List.of(single, "lo")) {
                Run run = serveTap(ns, name, 2);
                try (Launcher.Run r = run.run()) {
                    int rc = r.exit(30_000);
                    String err = r.stderr();
                    assertThat(rc).as(err).isEqualTo(1);
                    assertThat(err).contains("mqvirtio: serve: tap " + name + ": cannot open queue 0")
                            .contains(name + " exists but is not a multiqueue TAP device")
                            .contains("ip tuntap add dev " + name + " mode tap multi_queue")
                            .doesNotContain("\tat ").doesNotContain("Exception");
                }
                assertThat(run.sock()).doesNotExist();
            }
            assertThat(devices(ns)).contains(single, "lo");
        }
    }

    /**
     * Per-queue counters from outside the process: serve runs in a namespace of the test's own (its loopback
     * only), the test reads /metrics and /stats there, and {@code mqvirtio stats} reads them from a third process.
     */
    @Test
    @Timeout(120)
    void metricsAreReadableFromOutside() throws Exception {
        try (TestNetns ns = TestNetns.create()) {
            ns.ip("link", "set", "lo", "up");
            Path sock = dir.resolve("m.sock");
            List<String> cmd = new ArrayList<>(List.of("ip", "netns", "exec", ns.name()));
            cmd.addAll(Launcher.command("serve", "--socket-path", sock.toString(), "--queues", "2", "--loopback",
                    "--name", "vm7", "--metrics", "127.0.0.1:0"));
            try (Launcher.Run r = Launcher.start(dir, "metrics", cmd)) {
                int port = Integer.parseInt(r.awaitErr("metrics on http://127\\.0\\.0\\.1:(\\d+)/metrics", START_MS));
                Launcher.Http prom = ns.inside(() -> Launcher.get("127.0.0.1", port, "/metrics"));
                assertThat(prom.status()).isEqualTo(200);
                assertThat(prom.body()).contains("mqvirtio_queue_packets_total{device=\"vm7\",direction=\"tx\",queue=\"1\"} 0.0")
                        .contains("mqvirtio_frontend_connected{device=\"vm7\"} 0.0")
                        .contains("backend=\"loopback\",device=\"vm7\",socket=\"" + sock + "\"} 1");
                Launcher.Http json = ns.inside(() -> Launcher.get("127.0.0.1", port, "/stats"));
                DeviceStats d = Stats.Sample.parse(json.body()).devices().getFirst();
                assertThat(d.name()).isEqualTo("vm7");
                assertThat(d.queues()).hasSize(4);

                List<String> stats = new ArrayList<>(List.of("ip", "netns", "exec", ns.name()));
                stats.addAll(Launcher.command("stats", "--from", "127.0.0.1:" + port, "--watch", "0.3", "--count", "1"));
                try (Launcher.Run s = Launcher.start(dir, "stats", stats)) {
                    assertThat(s.exit(30_000)).as(s.stderr()).isZero();
                    assertThat(s.stdout()).contains("vm7: socket " + sock + ", loopback, 2 queue pairs")
                            .containsPattern("(?m)^tx1\\s+0\\s+0").containsPattern("(?m)^tx1\\s+0\\s+0\\.00");
                }
                // a port already taken is a clear start-up error, not a half-started daemon
                List<String> clash = new ArrayList<>(List.of("ip", "netns", "exec", ns.name()));
                clash.addAll(Launcher.command("serve", "--socket-path", dir.resolve("m2.sock").toString(), "--loopback",
                        "--metrics", "127.0.0.1:" + port));
                try (Launcher.Run c = Launcher.start(dir, "clash", clash)) {
                    assertThat(c.exit(30_000)).isEqualTo(1);
                    assertThat(c.stderr()).contains("mqvirtio: serve: metrics endpoint on 127.0.0.1:" + port)
                            .doesNotContain("\tat ");
                }
                assertThat(dir.resolve("m2.sock")).doesNotExist();
                r.process().destroy();
                assertThat(r.exit(15_000)).isZero();
            }
            assertThat(sock).doesNotExist();
        }
    }

    /**
     * The metrics port's accept failing (the daemon out of file descriptors: its soft limit lowered here, with
     * prlimit, to 3, and a client left waiting in the backlog) is logged in a bounded number of lines: the first ten
     * of the run of failures, then one in a thousand. It used to log every failure, ten lines a second for as long as
     * it lasted. Once descriptors are free again the waiting client is served and the log says how many failures
     * there were. Served on a platform thread: a connection's virtual thread, out of descriptors, used to break the
     * JDK's poller for good (an ExceptionInInitializerError), and with it every later connection.
     */
    @Test
    @Timeout(120)
    void metricsAcceptFailuresAreLoggedWithinBounds() throws Exception {
        Path sock = dir.resolve("nofile.sock");
        try (Launcher.Run r = Launcher.start(dir, "nofile", Launcher.command("serve", "--socket-path", sock.toString(),
                "--loopback", "--metrics", "127.0.0.1:0"))) {
            int port = Integer.parseInt(r.awaitErr("metrics on http://127\\.0\\.0\\.1:(\\d+)/metrics", START_MS));
            long pid = r.process().pid();
            String soft = Files.readAllLines(Path.of("/proc/" + pid + "/limits")).stream()
                    .filter(l -> l.startsWith("Max open files")).findFirst().orElseThrow().split("\\s+")[3];
            Thread.sleep(500); // the acceptor is in accept()
            prlimit(pid, "3:"); // the soft limit: no descriptor above standard error
            // The accept already waiting holds a descriptor it took before the limit: it takes this client, whose
            // connection is served without a descriptor to spare (a virtual thread's poller could not be set up).
            try (java.net.Socket first = new java.net.Socket("127.0.0.1", port)) {
                first.setSoTimeout(3_000);
                first.getOutputStream().write(GET_METRICS);
                first.getInputStream().readAllBytes();
            } catch (IOException e) {
                // what it got does not matter (metrics that need a descriptor may fail), only what comes after
            }
            r.awaitErr("accept failed \\(10 in a row\\)", 10_000);
            try (java.net.Socket waiting = new java.net.Socket("127.0.0.1", port)) {
                Thread.sleep(2_000); // twenty more failures: none of them logged
                prlimit(pid, soft + ":");
                waiting.setSoTimeout(10_000);
                waiting.getOutputStream().write(GET_METRICS);
                String reply = new String(waiting.getInputStream().readAllBytes(),
                        java.nio.charset.StandardCharsets.US_ASCII);
                assertThat(reply).as(r.stderr()).startsWith("HTTP/1.1 200");
            }
            r.awaitErr("metrics endpoint: accepting again after \\d+ failures", 10_000);
            assertThat(r.stderr().lines().filter(l -> l.contains("metrics endpoint: accept failed")).count())
                    .as(r.stderr()).isEqualTo(10);
            assertThat(Launcher.get("127.0.0.1", port, "/metrics").status()).isEqualTo(200);
            assertThat(r.stderr()).doesNotContain("\tat ");
            r.process().destroy();
            assertThat(r.exit(15_000)).as(r.stderr()).isZero();
        }
    }

    private static final byte[] GET_METRICS = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            .getBytes(java.nio.charset.StandardCharsets.US_ASCII);

    private static void prlimit(long pid, String nofile) throws Exception {
        Process p = new ProcessBuilder("prlimit", "--pid", String.valueOf(pid), "--nofile=" + nofile)
                .redirectErrorStream(true).start();
        assertThat(p.waitFor(10, TimeUnit.SECONDS)).isTrue();
        assertThat(p.exitValue()).as(new String(p.getInputStream().readAllBytes())).isZero();
    }

    /**
     * How TX goes into the TAP, per VM ({@code tap-tx=} in a --vm spec): the log says it at start, and
     * {@code mqvirtio_queue_io_info} and /stats say it per queue.
     */
    @Test
    @Timeout(120)
    void tapTxMethodIsInTheLogAndTheMetrics() throws Exception {
        org.junit.jupiter.api.Assumptions.assumeTrue(io.mqvirtio.linux.IoUring.unavailable() == null, "no io_uring");
        try (TestNetns ns = TestNetns.create()) {
            ns.ip("link", "set", "lo", "up");
            String a = tapName();
            String b = tapName();
            List<String> cmd = new ArrayList<>(List.of("ip", "netns", "exec", ns.name()));
            cmd.addAll(Launcher.command("serve", "--metrics", "127.0.0.1:0",
                    "--vm", "socket-path=" + dir.resolve("a.sock") + ",tap=" + a + ",queues=2,name=ua",
                    "--vm", "socket-path=" + dir.resolve("b.sock") + ",tap=" + b + ",tap-tx=writev,name=wb"));
            try (Launcher.Run r = Launcher.start(dir, "taptx", cmd)) {
                int port = Integer.parseInt(r.awaitErr("metrics on http://127\\.0\\.0\\.1:(\\d+)/metrics", START_MS));
                assertThat(r.stderr()).contains("tap " + a + ": 2 queues opened on a new device "
                        + "(it goes away when mqvirtio exits); TX through io_uring")
                        .contains("tap " + b + ": 1 queues opened on a new device (it goes away when mqvirtio exits); "
                                + "TX by writev (writev asked for)");
                Launcher.Http prom = ns.inside(() -> Launcher.get("127.0.0.1", port, "/metrics"));
                assertThat(prom.body())
                        .contains("mqvirtio_queue_io_info{device=\"ua\",direction=\"tx\",method=\"io_uring\",queue=\"1\"} 1")
                        .contains("mqvirtio_queue_io_info{device=\"ua\",direction=\"rx\",method=\"readv\",queue=\"0\"} 1")
                        .contains("mqvirtio_queue_io_info{device=\"wb\",direction=\"tx\",method=\"writev\",queue=\"0\"} 1");
                Launcher.Http json = ns.inside(() -> Launcher.get("127.0.0.1", port, "/stats"));
                List<DeviceStats> d = Stats.Sample.parse(json.body()).devices();
                assertThat(d.get(0).queues()).extracting(DeviceStats.Queue::method)
                        .containsExactly("readv", "io_uring", "readv", "io_uring");
                assertThat(d.get(1).backend()).doesNotContain("io_uring");
                r.process().destroy();
                assertThat(r.exit(15_000)).as(r.stderr()).isZero();
            }
        }
    }

    /**
     * Two VMs must never share a TAP device (the kernel steers the host's flows over all its queues: one VM would get
     * the other's frames). Names that differ can still name one device: {@code mqv%d} lets the kernel pick a number,
     * and a later VM's literal name may be the one it picked. That VM is refused once its device is known.
     */
    @Test
    @Timeout(120)
    void twoVmsNeverShareATapDevice() throws Exception {
        try (TestNetns ns = TestNetns.create()) {
            String prefix = "mqvd" + Integer.toHexString(ThreadLocalRandom.current().nextInt(0x100, 0x1000));
            String picked = prefix + "0"; // the kernel's choice for prefix%d in a namespace without one
            List<String> cmd = new ArrayList<>(List.of("ip", "netns", "exec", ns.name()));
            cmd.addAll(Launcher.command("serve", "--vm", "socket-path=" + dir.resolve("a.sock") + ",tap=" + prefix + "%d",
                    "--vm", "socket-path=" + dir.resolve("b.sock") + ",tap=" + picked));
            try (Launcher.Run r = Launcher.start(dir, "serve-shared", cmd)) {
                int rc = r.exit(30_000);
                String err = r.stderr();
                assertThat(rc).as(err).isEqualTo(1);
                assertThat(err).contains("mqvirtio: serve: tap " + picked + ": the TAP device of another VM")
                        .doesNotContain("\tat ").doesNotContain("Exception");
            }
            assertThat(dir.resolve("a.sock")).doesNotExist();
            assertThat(eventually(() -> !devices(ns).contains(picked))).as("the TAP it created is gone").isTrue();
        }
    }

    record Run(Launcher.Run run, Path sock) {}

    private Run serveTap(TestNetns ns, String tap, int queues) throws IOException {
        Path sock = dir.resolve(tap + ".sock");
        List<String> cmd = new ArrayList<>(List.of("ip", "netns", "exec", ns.name()));
        cmd.addAll(Launcher.command("serve", "--socket-path", sock.toString(), "--queues", String.valueOf(queues),
                "--tap", tap));
        return new Run(Launcher.start(dir, "serve-" + tap, cmd), sock);
    }

    static String tapName() {
        return "mqvp" + Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000, 0x100000));
    }

    /** The interfaces of the namespace, from its own /proc/net/dev. */
    static List<String> devices(TestNetns ns) throws Exception {
        List<String> l = new ArrayList<>();
        for (String line : ns.exec("cat", "/proc/net/dev").split("\n")) {
            int colon = line.indexOf(':');
            if (colon > 0) {
                l.add(line.substring(0, colon).trim());
            }
        }
        return l;
    }

    /** How many descriptors of process {@code pid} are open on /dev/net/tun. */
    static long tunFds(long pid) throws IOException {
        try (var s = Files.list(Path.of("/proc", String.valueOf(pid), "fd"))) {
            return s.filter(p -> {
                try {
                    return Files.readSymbolicLink(p).toString().equals("/dev/net/tun");
                } catch (IOException e) {
                    return false;
                }
            }).count();
        }
    }

    static void kill(String signal, long pid) throws Exception {
        Process k = new ProcessBuilder("kill", "-" + signal, String.valueOf(pid)).redirectErrorStream(true).start();
        assertThat(k.waitFor(10, TimeUnit.SECONDS)).isTrue();
        assertThat(k.exitValue()).isZero();
    }

    interface Check {
        boolean ok() throws Exception;
    }

    static boolean eventually(Check c) throws Exception {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(5);
        while (!c.ok()) {
            if (System.nanoTime() > deadline) {
                return false;
            }
            Thread.sleep(50);
        }
        return true;
    }
}
