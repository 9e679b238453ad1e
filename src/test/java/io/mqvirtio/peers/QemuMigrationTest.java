package io.mqvirtio.peers;

import static org.assertj.core.api.Assertions.assertThat;

import com.sun.net.httpserver.HttpServer;
import io.mqvirtio.backend.TapBackend;
import io.mqvirtio.linux.TestNetns;
import io.mqvirtio.net.NetDevice;
import io.mqvirtio.vhostuser.VhostUserServer;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.junit.jupiter.api.io.TempDir;

/**
 * Live migration with the real thing: a Linux guest (4 vCPUs, 4 queue pairs) in QEMU 10, served by one of our net
 * devices, moves to a second QEMU served by another (each device with its own socket and its own multiqueue TAP,
 * both TAPs on one bridge in a network namespace this test creates, where the host side serves a bulk stream). The
 * destination waits with {@code -incoming}; the test drives {@code migrate} over QMP while the guest downloads 2 MB
 * again and again and checks every byte (a page we wrote without setting its dirty bit reaches the destination
 * stale, and the checksum catches it) and pings. Reports downtime, total time and the longest ping gap.
 */
@Tag("peer")
class QemuMigrationTest {
    static final int PAIRS = 4;
    static final int DOWN_BYTES = 2 << 20;

    @TempDir
    Path dir;

    @ParameterizedTest(name = "device options \"{0}\"")
    @ValueSource(strings = {"", "packed=on"})
    @Timeout(400)
    void guestMovesBetweenTwoBackendsWithoutLosingAByte(String devOpts) throws Exception {
        Peers.requireRoot("TAP devices and a bridge in a network namespace");
        Peers.require("qemu-system-x86_64", "QEMU");
        Path repo = Path.of("").toAbsolutePath();
        Path runGuest = repo.resolve("scripts/guest/run-guest.sh");
        Path script = repo.resolve("scripts/guest/tests/migrate.sh");
        int net = ThreadLocalRandom.current().nextInt(10, 250);
        String host = "10.78." + net + ".1";
        String guest = "10.78." + net + ".2";
        String id = Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000));
        String tapA = "mqma" + id, tapB = "mqmb" + id, bridge = "mqbr" + id;
        byte[] down = new byte[DOWN_BYTES];
        new Random(7).nextBytes(down);
        int port;
        try (ServerSocket s = new ServerSocket(0)) {
            port = s.getLocalPort();
        }

        try (TestNetns ns = TestNetns.create()) {
            TapBackend backendA = ns.inside(() -> TapBackend.open(tapA, PAIRS));
            TapBackend backendB = ns.inside(() -> TapBackend.open(tapB, PAIRS));
            ns.ip("link", "add", bridge, "type", "bridge");
            for (String t : new String[] {tapA, tapB}) {
                ns.ip("link", "set", t, "master", bridge);
                ns.ip("link", "set", t, "up");
            }
            ns.ip("addr", "add", host + "/24", "dev", bridge);
            ns.ip("link", "set", bridge, "up");
            HttpServer http = ns.inside(() -> HttpServer.create(new InetSocketAddress(host, 5002), 8));
            http.createContext("/down", ex -> {
                ex.sendResponseHeaders(200, down.length);
                try (OutputStream o = ex.getResponseBody()) {
                    o.write(down);
                }
            });
            http.start();
            Path sockA = dir.resolve("a.sock"), sockB = dir.resolve("b.sock");
            Path qmpA = dir.resolve("a.qmp"), qmpB = dir.resolve("b.qmp");
            Path logA = dir.resolve("a.log"), logB = dir.resolve("b.log");
            List<Process> qemus = new ArrayList<>();
            try (NetDevice devA = new NetDevice(NetDevice.Config.of("mig-a", PAIRS), backendA);
                 VhostUserServer serverA = VhostUserServer.listen(sockA, devA);
                 NetDevice devB = new NetDevice(NetDevice.Config.of("mig-b", PAIRS), backendB);
                 VhostUserServer serverB = VhostUserServer.listen(sockB, devB)) {
                Process src = guest(runGuest, repo, script, sockA, qmpA, logA, devOpts, guest, host, down, List.of());
                qemus.add(src);
                Process dst = guest(runGuest, repo, script, sockB, qmpB, logB, devOpts, guest, host, down,
                        List.of("-incoming", "tcp:127.0.0.1:" + port));
                qemus.add(dst);
                try (Qmp a = Qmp.connect(qmpA, src, 60_000); Qmp b = Qmp.connect(qmpB, dst, 60_000)) {
                    // the guest is streaming: move it
                    awaitLine(logA, "MQV-RESULT phase=traffic", src, 240);
                    Thread.sleep(3000);
                    assertThat(a.execute("{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"tcp:127.0.0.1:" + port + "\"}}",
                            10_000)).as("migrate").contains("\"return\"");
                    String status = "";
                    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(120);
                    while (System.nanoTime() < deadline) {
                        status = a.execute("{\"execute\":\"query-migrate\"}", 10_000);
                        if (status.contains("\"status\": \"completed\"") || status.contains("\"status\": \"failed\"")
                                || status.contains("\"status\":\"completed\"") || status.contains("\"status\":\"failed\"")) {
                            break;
                        }
                        Thread.sleep(200);
                    }
                    assertThat(status).as("migration status").containsPattern("\"status\": ?\"completed\"");
                    System.out.println("QemuMigrationTest[" + devOpts + "]: downtime " + field(status, "downtime")
                            + " ms, total " + field(status, "total-time") + " ms; source logged "
                            + devA.counters().stream().mapToLong(c -> c.packets()).sum() + " packets");
                    a.execute("{\"execute\":\"quit\"}", 10_000);
                }
                assertThat(dst.waitFor(240, TimeUnit.SECONDS)).as("the guest finished on the destination").isTrue();
                String console = Files.readString(logB);
                Map<String, String> r = QemuGuestTest.results(console);
                String context = "\n--- destination console (tail) ---\n" + Peers.tail(logB, 40)
                        + "\n--- source console (tail) ---\n" + Peers.tail(logA, 20);
                assertThat(console).as(context).contains("MQV-DONE rc=0");
                assertThat(Integer.parseInt(r.getOrDefault("downloads", "0"))).as(context).isPositive();
                assertThat(r).as(context).containsEntry("bad_downloads", "0");
                System.out.println("QemuMigrationTest[" + devOpts + "]: " + r);
                assertThat(devB.counters().get(0).packets() + devB.counters().get(2).packets()
                        + devB.counters().get(4).packets() + devB.counters().get(6).packets())
                        .as("the destination's RX queues carried the stream").isPositive();
            } finally {
                for (Process p : qemus) {
                    Peers.stop(p, 5000);
                }
                http.stop(0);
            }
        }
    }

    private Process guest(Path runGuest, Path repo, Path script, Path sock, Path qmp, Path log, String devOpts,
                          String guest, String host, byte[] down, List<String> extra) throws Exception {
        List<String> cmd = new ArrayList<>(List.of(runGuest.toString(), "--vhost-user", sock.toString(),
                "--queues", String.valueOf(PAIRS), "--smp", "4", "--script", script.toString(), "--log", log.toString(),
                "--timeout", "360", "--qmp", qmp.toString(), "--arg", "ip=" + guest + "/24", "--arg", "peer=" + host,
                "--arg", "md5=" + QemuGuestTest.md5(down), "--arg", "seconds=50",
                "--dev-opts", devOpts == null ? "" : devOpts));
        if (!extra.isEmpty()) {
            cmd.add("--");
            cmd.addAll(extra);
        }
        return new ProcessBuilder(cmd).redirectErrorStream(true)
                .redirectOutput(dir.resolve(log.getFileName() + ".run-guest.out").toFile()).directory(repo.toFile()).start();
    }

    private static void awaitLine(Path log, String line, Process qemu, int seconds) throws Exception {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds);
        while (!Files.exists(log) || !Files.readString(log).contains(line)) {
            assertThat(qemu.isAlive()).as("QEMU runs; console:%n%s", Peers.tail(log, 30)).isTrue();
            assertThat(System.nanoTime()).as("\"%s\" within %d s; console:%n%s", line, seconds, Peers.tail(log, 30))
                    .isLessThan(deadline);
            Thread.sleep(200);
        }
    }

    private static String field(String json, String name) {
        Matcher m = Pattern.compile("\"" + Pattern.quote(name) + "\": ?(\\d+)").matcher(json);
        return m.find() ? m.group(1) : "?";
    }
}
