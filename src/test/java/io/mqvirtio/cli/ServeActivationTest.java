package io.mqvirtio.cli;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import io.mqvirtio.linux.ErrnoException;
import io.mqvirtio.linux.SdNotify;
import io.mqvirtio.linux.UnixSocket;
import io.mqvirtio.net.NetDriver;
import io.mqvirtio.peers.Peers;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * serve started the way a supervisor starts a vhost-user backend: with a listening socket it inherits (systemd's
 * socket activation, played by systemd's own {@code systemd-socket-activate}; and vhost-user.rst's {@code --fd N}),
 * telling readiness and stopping over {@code NOTIFY_SOCKET}. The inherited socket serves one frontend after another,
 * and stays the supervisor's (serve never removes its file). Descriptors that are no listening socket are one-line
 * errors.
 */
class ServeActivationTest {
    static final long START_MS = 30_000;

    @TempDir
    Path dir;

    @Test
    @Timeout(120)
    void socketActivatedServeTellsSystemdItIsReadyAndServesOnTheInheritedSocket() throws Exception {
        Peers.require("systemd-socket-activate", "systemd's socket activation tool");
        for (boolean explicitFd : List.of(false, true)) {
            Path sock = dir.resolve(explicitFd ? "fd.sock" : "activated.sock");
            Path notify = dir.resolve(explicitFd ? "fd.notify" : "activated.notify");
            try (SdNotify.Listener systemd = SdNotify.Listener.bind(notify.toString())) {
                List<String> cmd = new ArrayList<>(List.of("systemd-socket-activate", "-l", sock.toString(),
                        "-E", "NOTIFY_SOCKET=" + notify));
                cmd.addAll(Launcher.command("serve", "--loopback", "--queues", "2", "--name", "vm-sa"));
                if (explicitFd) {
                    cmd.addAll(List.of("--fd", "3"));
                }
                try (Launcher.Run r = Launcher.start(dir, explicitFd ? "fd" : "activated", cmd)) {
                    r.awaitErr("Listening on " + Pattern.quote(sock.toString()), START_MS);
                    // systemd-socket-activate starts serve when the first frontend connects, as systemd does
                    for (int session = 0; session < 2; session++) {
                        try (NetDriver nic = NetDriver.connect(sock, NetDriver.Options.pairs(2))) {
                            assertThat(nic.maxPairs()).isEqualTo(2);
                        }
                    }
                    String ready = systemd.receive((int) START_MS);
                    assertThat(ready).as("readiness, stderr:%n%s", r.stderr()).isNotNull().contains("READY=1")
                            .contains("STATUS=serving 1 VM").containsPattern("MAINPID=[0-9]+");
                    r.awaitErr("listening on (fd:3|" + Pattern.quote(sock.toString()) + ") \\(inherited\\)", START_MS);
                    r.process().destroy(); // SIGTERM
                    assertThat(r.exit(15_000)).as(r.stderr()).isZero();
                    assertThat(systemd.receive(5000)).isEqualTo("STOPPING=1");
                    assertThat(sock).as("the socket file is the supervisor's").exists();
                    assertThat(r.stderr()).contains("vm-sa: stopped (SIGTERM)").doesNotContain("\tat ");
                }
            }
        }
    }

    /**
     * A socket systemd passed that no VM takes (two passed, one VM without a socket of its own) is closed at start,
     * with a warning: left open, it listened with nobody to accept, and a frontend pointed at it waited forever. A
     * socket a VM names with --fd is that VM's, never closed as unused.
     */
    @Test
    @Timeout(120)
    void passedSocketsNoVmUsesAreClosed() throws Exception {
        Peers.require("systemd-socket-activate", "systemd's socket activation tool");
        Path used = dir.resolve("used.sock");
        Path spare = dir.resolve("spare.sock");
        List<String> cmd = new ArrayList<>(List.of("systemd-socket-activate", "-l", used.toString(), "-l",
                spare.toString()));
        cmd.addAll(Launcher.command("serve", "--loopback", "--name", "vm-one"));
        try (Launcher.Run r = Launcher.start(dir, "spare", cmd)) {
            r.awaitErr("Listening on " + Pattern.quote(spare.toString()), START_MS);
            try (NetDriver nic = NetDriver.connect(used, NetDriver.Options.pairs(1))) { // starts serve
                assertThat(nic.maxPairs()).isEqualTo(1);
            }
            r.awaitErr("systemd passed a socket that no VM uses: fd:4 \\(fd 4\\); closed", START_MS);
            assertThatThrownBy(() -> UnixSocket.connect(spare).close()).isInstanceOf(ErrnoException.class)
                    .hasMessageContaining("Connection refused");
            try (NetDriver nic = NetDriver.connect(used, NetDriver.Options.pairs(1))) {
                assertThat(nic.maxPairs()).isEqualTo(1);
            }
            r.process().destroy();
            assertThat(r.exit(15_000)).as(r.stderr()).isZero();
        }
        // --fd 3 with the one socket systemd passed: the VM's, not unused
        Path own = dir.resolve("own.sock");
        cmd = new ArrayList<>(List.of("systemd-socket-activate", "-l", own.toString()));
        cmd.addAll(Launcher.command("serve", "--loopback", "--fd", "3"));
        try (Launcher.Run r = Launcher.start(dir, "own", cmd)) {
            r.awaitErr("Listening on " + Pattern.quote(own.toString()), START_MS);
            for (int session = 0; session < 2; session++) {
                try (NetDriver nic = NetDriver.connect(own, NetDriver.Options.pairs(1))) {
                    assertThat(nic.maxPairs()).isEqualTo(1);
                }
            }
            r.process().destroy();
            assertThat(r.exit(15_000)).as(r.stderr()).isZero();
            assertThat(r.stderr()).doesNotContain("no VM uses");
        }
    }

    /**
     * LISTEN_FDS counting more descriptors than were passed (a unit's wrapper that sets it by hand, a supervisor that
     * is not systemd): the descriptors above the passed ones are the JVM's own (its modules image, the jars), which
     * it opened before serve ran. serve closed them as "unused passed sockets", and the JVM crashed (SIGSEGV) or
     * failed to load classes. Only a socket is closed; anything else is left alone, with a warning.
     */
    @Test
    @Timeout(120)
    void aListenFdsCountAboveThePassedSocketsClosesNothingOfTheJvms() throws Exception {
        Peers.require("systemd-socket-activate", "systemd's socket activation tool");
        Path sock = dir.resolve("over.sock");
        // systemd-socket-activate passes one socket (fd 3) and sets LISTEN_PID to serve's pid; env, which execs
        // serve in that same process, says 8
        List<String> cmd = new ArrayList<>(List.of("systemd-socket-activate", "-l", sock.toString(), "env",
                "LISTEN_FDS=8"));
        cmd.addAll(Launcher.command("serve", "--loopback", "--name", "vm-over"));
        try (Launcher.Run r = Launcher.start(dir, "over", cmd)) {
            r.awaitErr("Listening on " + Pattern.quote(sock.toString()), START_MS);
            for (int session = 0; session < 2; session++) {
                try (NetDriver nic = NetDriver.connect(sock, NetDriver.Options.pairs(1))) { // the first starts serve
                    assertThat(nic.maxPairs()).as(r.stderr()).isEqualTo(1);
                }
            }
            r.awaitErr("LISTEN_FDS counts 7 descriptors that are no socket: fd 4 \\(fd:4\\), which is no socket but "
                    + ".*: left alone", START_MS);
            r.process().destroy();
            assertThat(r.exit(15_000)).as(r.stderr()).isZero();
            assertThat(r.stderr()).contains("vm-over: stopped (SIGTERM)").doesNotContain("\tat ")
                    .doesNotContain("no VM uses: fd:4");
        }
    }

    /**
     * LISTEN_FDS may count up to 1024 descriptors: 1000 with one socket passed is 999 that are no socket (the JVM's
     * own, or not open), each left alone. That is said once, with the count and the first few named, not in a
     * line each (999 warnings, each VM's other lines lost among them, and the log's queue full: lines left out).
     */
    @Test
    @Timeout(120)
    void aHugeListenFdsCountIsOneWarning() throws Exception {
        Peers.require("systemd-socket-activate", "systemd's socket activation tool");
        Path sock = dir.resolve("huge.sock");
        List<String> cmd = new ArrayList<>(List.of("systemd-socket-activate", "-l", sock.toString(), "env",
                "LISTEN_FDS=1000"));
        cmd.addAll(Launcher.command("serve", "--loopback", "--name", "vm-huge"));
        try (Launcher.Run r = Launcher.start(dir, "huge", cmd)) {
            r.awaitErr("Listening on " + Pattern.quote(sock.toString()), START_MS);
            try (NetDriver nic = NetDriver.connect(sock, NetDriver.Options.pairs(1))) { // starts serve
                assertThat(nic.maxPairs()).as(r.stderr()).isEqualTo(1);
            }
            r.process().destroy();
            assertThat(r.exit(15_000)).as(r.stderr()).isZero();
            List<String> counted = r.stderr().lines().filter(l -> l.contains("LISTEN_FDS counts")).toList();
            assertThat(counted).as("the lines about counted descriptors").hasSize(1);
            assertThat(counted.get(0)).contains("LISTEN_FDS counts 999 descriptors that are no socket")
                    .contains("fd 4 (fd:4), which is no socket but ").contains("left alone");
            assertThat(r.stderr()).contains("vm-huge: stopped (SIGTERM)").doesNotContain("left out");
        }
    }

    /**
     * One listening socket passed twice (at fd 3 and, dup'ed, at fd 4: a supervisor's mistake) for two VMs: both
     * would accept on it, and each VM's frontend would get whichever device accepted first, another VM's backend (its
     * TAP, its network) half the time. It is refused as a socket given to two VMs, as one path or one fd number is,
     * whether the VMs name the descriptors (fd=) or take systemd's (LISTEN_FDS).
     */
    @Test
    @Timeout(120)
    void oneSocketPassedTwiceIsNotGivenToTwoVms() throws Exception {
        Peers.require("python3", "Python 3, to pass one socket as two descriptors");
        String passTwice = "import os, socket, sys\n"
                + "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.bind(sys.argv[1]); s.listen(8)\n"
                + "for t in (3, 4):\n"
                + "    if s.fileno() != t: os.dup2(s.fileno(), t)\n"
                + "    os.set_inheritable(t, True)\n"
                + "if sys.argv[2] == 'systemd': os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='2')\n"
                + "os.execvp(sys.argv[3], sys.argv[3:])\n";
        for (String how : List.of("fd", "systemd")) {
            Path sock = dir.resolve(how + "-twice.sock");
            List<String> cmd = new ArrayList<>(List.of("python3", "-c", passTwice, sock.toString(), how));
            cmd.addAll(how.equals("fd")
                    ? Launcher.command("serve", "--vm", "fd=3,loopback,name=a", "--vm", "fd=4,loopback,name=b")
                    : Launcher.command("serve", "--vm", "loopback,name=a", "--vm", "loopback,name=b"));
            try (Launcher.Run r = Launcher.start(dir, how + "-twice", cmd)) {
                assertThat(r.exit(20_000)).as("%s: %s", how, r.stderr()).isEqualTo(2);
                assertThat(r.stderr()).as(how).contains("is given to two VMs").doesNotContain("\tat ");
            }
        }
    }

    /**
     * A unit with WatchdogSec= (systemd passes WATCHDOG_USEC, and WATCHDOG_PID for the main process) kills a service
     * that does not send WATCHDOG=1 within each period, from READY on (SIGABRT: every VM's network down, then a
     * restart, each period). serve pings every half period once ready, and only for its own watchdog; a period of
     * 1 us is no spin.
     */
    @Test
    @Timeout(120)
    void serveFeedsSystemdsWatchdogOnlyItsOwnAndWithoutSpinning() throws Exception {
        record Case(String tag, String usec, String pid, int least, int most) {}
        for (Case c : List.of(new Case("dog", "400000", null, 4, 12), new Case("tiny", "1", null, 20, 150),
                new Case("other", "400000", "1", 0, 0))) {
            Path notify = dir.resolve(c.tag() + ".notify");
            try (SdNotify.Listener systemd = SdNotify.Listener.bind(notify.toString())) {
                List<String> cmd = new ArrayList<>(List.of("env", "NOTIFY_SOCKET=" + notify, "WATCHDOG_USEC=" + c.usec()));
                if (c.pid() != null) {
                    cmd.add("WATCHDOG_PID=" + c.pid());
                }
                cmd.addAll(Launcher.command("serve", "--loopback", "--socket-path", dir.resolve(c.tag() + ".sock")
                        .toString()));
                try (Launcher.Run r = Launcher.start(dir, c.tag(), cmd)) {
                    assertThat(systemd.receive((int) START_MS)).as("%s: %s", c.tag(), r.stderr()).contains("READY=1");
                    int pings = 0;
                    long end = System.nanoTime() + 1_000_000_000L;
                    while (System.nanoTime() < end) {
                        String m = systemd.receive(100);
                        if (m != null) {
                            assertThat(m).isEqualTo("WATCHDOG=1");
                            pings++;
                        }
                    }
                    assertThat(pings).as("%s: WATCHDOG=1 in the second after READY", c.tag()).isBetween(c.least(),
                            c.most());
                    r.process().destroy();
                    assertThat(r.exit(15_000)).as(r.stderr()).isZero();
                }
            }
        }
    }

    /**
     * bin/mqvirtio, started by systemd, first makes its AOT cache with a training serve in the background when the
     * jar is newer than the cache. That serve inherited NOTIFY_SOCKET and told systemd READY=1 and MAINPID=its own
     * pid before the real serve listened: under NotifyAccess=all, systemd took it for the main process, which exits
     * seconds later, and stopped the service. The training run gets none of systemd's variables.
     */
    @Test
    @Timeout(180)
    void theLaunchersTrainingRunTellsSystemdNothing() throws Exception {
        Path root = dir.resolve("root");
        java.nio.file.Files.createDirectories(root.resolve("bin/lib"));
        java.nio.file.Files.createDirectories(root.resolve("src/main"));
        java.nio.file.Files.createDirectories(root.resolve("target/lib"));
        for (String f : List.of("bin/mqvirtio", "bin/lib/jdk.sh")) {
            java.nio.file.Files.copy(Path.of(f), root.resolve(f), java.nio.file.StandardCopyOption.COPY_ATTRIBUTES);
        }
        java.nio.file.Files.writeString(root.resolve("pom.xml"), "<project/>\n");
        Path jar = Launcher.jar();
        java.nio.file.Files.copy(jar, root.resolve("target/mqvirtio.jar"));
        try (var libs = java.nio.file.Files.list(jar.resolveSibling("lib"))) {
            for (Path l : libs.toList()) {
                java.nio.file.Files.copy(l, root.resolve("target/lib").resolve(l.getFileName()));
            }
        }
        var old = java.nio.file.attribute.FileTime.fromMillis(System.currentTimeMillis() - 3_600_000);
        for (String f : List.of("src/main", "pom.xml")) {
            java.nio.file.Files.setLastModifiedTime(root.resolve(f), old);
        }
        Path notify = dir.resolve("launcher.notify");
        try (SdNotify.Listener systemd = SdNotify.Listener.bind(notify.toString())) {
            List<String> cmd = List.of("env", "NOTIFY_SOCKET=" + notify, "WATCHDOG_USEC=100000",
                    root.resolve("bin/mqvirtio").toString(), "--version");
            try (Launcher.Run r = Launcher.start(dir, "launcher", cmd)) {
                assertThat(r.exit(150_000)).as(r.stderr()).isZero();
            }
            assertThat(root.resolve("target/mqvirtio.aot")).as("the training run made the cache").exists();
            assertThat(systemd.receive(500)).as("what systemd was told").isNull();
        }
    }

    /**
     * systemd's stop (SIGTERM) that lands before serve handles the signal (in the JVM's start-up, the first second or
     * so: a `systemctl stop` or a host's shutdown right after socket activation started serve) ends serve by the
     * JVM's default, exit status 143, not by the signal. systemd counts a death by SIGTERM as clean, but exit status
     * 143 as a failure: the unit was left "failed" by an ordinary stop. The contrib unit counts 143 as success.
     */
    @Test
    @Timeout(120)
    void aStopBeforeServeHandlesSigtermLeavesTheUnitClean() throws Exception {
        List<String> cmd = Launcher.command("serve", "--loopback", "--socket-path", dir.resolve("early.sock").toString());
        try (Launcher.Run r = Launcher.start(dir, "early", cmd)) {
            Thread.sleep(250);
            r.process().destroy(); // SIGTERM, in all likelihood before serve's handler (then 143; after it, 0)
            assertThat(r.exit(15_000)).as(r.stderr()).isIn(0, 143);
        }
        String service = java.nio.file.Files.readString(Path.of("contrib/systemd/mqvirtio@.service"));
        List<String> success = service.lines().filter(l -> l.startsWith("SuccessExitStatus="))
                .flatMap(l -> java.util.Arrays.stream(l.substring(l.indexOf('=') + 1).trim().split("\\s+"))).toList();
        assertThat(success).as("the unit's SuccessExitStatus=").contains("143");
    }

    @Test
    @Timeout(120)
    void descriptorsThatAreNoListeningSocketAreOneLineErrors() throws Exception {
        record Case(int rc, String message, String... args) {}
        List<Case> cases = List.of(
                new Case(1, "fd 0 is not a socket", "serve", "--fd", "0", "--loopback"),
                new Case(1, "fd 97 is not open", "serve", "--fd", "97", "--loopback"),
                new Case(2, "--fd and --socket-path are incompatible", "serve", "--fd", "3", "--socket-path",
                        dir.resolve("x.sock").toString(), "--loopback"),
                new Case(2, "does not go with --client", "serve", "--fd", "3", "--client", "--loopback"),
                new Case(2, "--fd must be in", "serve", "--fd", "-4", "--loopback"),
                new Case(2, "is given to two VMs", "serve", "--vm", "fd=3,loopback,name=a", "--vm", "fd=3,loopback,name=b"));
        for (Case c : cases) {
            try (Launcher.Run r = Launcher.runToEnd(dir, "bad", 30_000, c.args())) {
                assertThat(r.exit(30_000)).as("exit for %s: %s", c.message(), r.stderr()).isEqualTo(c.rc());
                assertThat(r.stderr()).as("stderr for %s", c.message()).contains(c.message()).doesNotContain("\tat ");
            }
        }
        // sockets systemd passed to another process (LISTEN_PID not ours) are not taken
        List<String> cmd = new ArrayList<>(List.of("env", "LISTEN_PID=1", "LISTEN_FDS=1"));
        cmd.addAll(Launcher.command("serve", "--loopback"));
        try (Launcher.Run r = Launcher.start(dir, "other-pid", cmd)) {
            assertThat(r.exit(30_000)).isEqualTo(2);
            assertThat(r.stderr()).contains("or sockets from systemd (LISTEN_FDS)");
        }
    }
}
