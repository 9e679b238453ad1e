package io.mqvirtio.peers;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.cli.Launcher;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.LocalTime;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * A backend restart must not cost the VM its NIC. Two set-ups: QEMU listens on the vhost-user socket (server=on)
 * and our backend connects (client mode); or our backend listens and QEMU's client chardev reconnects
 * (reconnect), so each new backend must take over the socket path the killed one left behind. Either way the
 * backend runs as its own process on a persistent multiqueue TAP, and is killed with SIGKILL and started again ten
 * times while a real Linux guest pings the host side. Afterwards the guest's pings all come back (its
 * RX ring did not run dry over the restarts: no descriptor was lost) and it still has eth0.
 */
@Tag("peer")
class BackendRestartTest {
    static final int PAIRS = 2;
    static final int RESTARTS = 10;

    @TempDir
    Path tmp;
    /** Logs are kept under target/ so a failure can be read after the run. */
    Path dir;

    @ParameterizedTest(name = "backend as {0}")
    @ValueSource(strings = {"client", "server", "client-packed", "server-packed"})
    @Timeout(400)
    void guestSurvivesTenBackendKills(String mode) throws Exception {
        boolean backendListens = mode.startsWith("server");
        boolean packed = mode.endsWith("packed");
        dir = Files.createDirectories(Path.of("target", "peer-logs", "backend-restart-" + mode).toAbsolutePath());
        try (var old = Files.list(dir)) {
            for (Path p : old.toList()) {
                Files.delete(p);
            }
        }
        Path sock = tmp.resolve("vm.sock");
        List<LocalTime> killed = new ArrayList<>();
        List<LocalTime> spawned = new ArrayList<>();
        try (PeerLab lab = PeerLab.open(dir)) {
            // persistent: it outlives every backend process, and keeps the host side's address
            String tap = lab.persistentTap("mqvr");
            String doneAddr = lab.address(3);
            List<Launcher.Run> backends = new ArrayList<>();
            if (backendListens) {
                backends.add(backend(lab, 0, sock, tap, false));
            }
            Guest.Options o = lab.guest("vm").vhostUser(sock).queues(PAIRS).smp(2).script("restart.sh").timeout(330)
                    .devOpts(packed ? "packed=on" : "").arg("ip", lab.guestCidr()).arg("peer", lab.host())
                    .arg("done", doneAddr).arg("max", 240).arg("timeout", 300);
            Guest g = (backendListens ? o.reconnect() : o.server()).start();
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
            while (!Files.exists(sock)) {
                assertThat(System.nanoTime()).as("QEMU's socket").isLessThan(deadline);
                Thread.sleep(100);
            }
            // QEMU waits for its first backend before it runs the guest
            if (!backendListens) {
                backends.add(backend(lab, 0, sock, tap, true));
            }
            g.awaitLine("MQV-READY", 90);
            for (int i = 1; i <= RESTARTS; i++) {
                // kill each backend only once it serves every ring, and after the guest had time to use it
                Peers.waitForLine(backends.get(i - 1).err(), "ring " + (2 * PAIRS - 1) + " started", 60);
                Thread.sleep(1000 + ThreadLocalRandom.current().nextInt(1500));
                Process b = backends.get(backends.size() - 1).process();
                b.destroyForcibly().waitFor(10, TimeUnit.SECONDS); // SIGKILL: no goodbye to QEMU
                killed.add(LocalTime.now());
                Thread.sleep(300);
                spawned.add(LocalTime.now());
                backends.add(backend(lab, i, sock, tap, !backendListens));
            }
            Peers.waitForLine(backends.get(RESTARTS).err(), "ring " + (2 * PAIRS - 1) + " started", 60);
            lab.ip("addr", "add", doneAddr + "/24", "dev", tap); // tells the guest the restarts are over
            assertThat(g.awaitExit(300)).as("guest finished%s", g.context()).isTrue();

            String console = g.consoleText();
            Map<String, String> r = g.results();
            String context = g.context() + "\n--- last backend (logs in " + dir + ") ---\n"
                    + Peers.tail(backends.get(RESTARTS).err(), 30);
            assertThat(r).as(context).containsEntry("eth0", "present").containsEntry("reached_done", "1")
                    .containsEntry("after_ok", "1");
            long received = Long.parseLong(r.getOrDefault("during_received", "0"));
            assertThat(received).as("pings answered while the backend was restarted %d times%s", RESTARTS, context)
                    .isPositive();
            String breakdown = breakdown(mode, backends, killed, spawned, backendListens)
                    + "longest ping gap (guest, 0.1 s pings): " + r.get("longest_gap_ms") + " ms\n";
            Files.writeString(dir.resolve("restart-breakdown.txt"), breakdown);
            System.out.print(breakdown);
            assertThat(console).contains("MQV-DONE rc=0");
        }
    }

    /**
     * Where each restart's time went, from the backends' own log lines: the JVM and set-up (spawned until listening,
     * or connected to QEMU), waiting for QEMU (until a frontend is connected: QEMU's reconnect interval when the
     * backend listens), and the vhost-user negotiation (until the last ring started).
     */
    private static String breakdown(String mode, List<Launcher.Run> backends, List<LocalTime> killed,
                                    List<LocalTime> spawned, boolean listens) throws Exception {
        StringBuilder b = new StringBuilder("backend restarts (" + mode + "), ms: kill-to-spawn, JVM and set-up, waiting "
                + "for QEMU, negotiation, kill-to-last-ring\n");
        for (int i = 1; i <= killed.size(); i++) {
            List<String> lines = Files.readAllLines(backends.get(i).err());
            LocalTime up = at(lines, listens ? "listening on" : "connected to");
            LocalTime connected = at(lines, "front end connected");
            LocalTime ready = at(lines, "ring " + (2 * PAIRS - 1) + " started");
            b.append(String.format("  %2d: %5d %5d %5d %5d %6d%n", i, ms(killed.get(i - 1), spawned.get(i - 1)),
                    ms(spawned.get(i - 1), up), ms(up, connected), ms(connected, ready), ms(killed.get(i - 1), ready)));
        }
        return b.toString();
    }

    private static LocalTime at(List<String> lines, String marker) {
        for (String l : lines) {
            if (l.contains(marker) && l.length() > 12) {
                return LocalTime.parse(l.substring(0, 12));
            }
        }
        return null;
    }

    private static long ms(LocalTime a, LocalTime b) {
        return a == null || b == null ? -1 : java.time.Duration.between(a, b).toMillis();
    }

    /** Starts {@code mqvirtio serve} as its own process inside the lab's namespace ({@code backend-N.err}). */
    private static Launcher.Run backend(PeerLab lab, int n, Path sock, String tap, boolean client) throws Exception {
        List<String> args = new ArrayList<>(List.of("--socket-path", sock.toString(), "--queues", String.valueOf(PAIRS),
                "--tap", tap));
        if (client) {
            args.add("--client");
        }
        return lab.serve("backend-" + n, args.toArray(String[]::new));
    }
}
