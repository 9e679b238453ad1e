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
import org.junit.jupiter.params.provider.CsvSource;
import org.junit.jupiter.api.io.TempDir;

/**
 * Live migration with the real thing: a Linux guest (4 vCPUs, 4 queue pairs) in QEMU 10, served by one of our net
 * devices (in this JVM, or a {@code mqvirtio serve} process with both VMs as {@code --vm}s), moves to a second QEMU
 * served by another (each device with its own socket and its own multiqueue TAP,
 * both TAPs on one bridge in a network namespace this test creates, where the host side serves a bulk stream). The
 * destination waits with {@code -incoming}; the test drives {@code migrate} over QMP while the guest downloads 2 MB
 * again and again and checks each by MD5, pings, and is blasted with UDP; the destination starts paused ({@code -S})
 * so that the two QEMUs' guest memories can be compared page by page at the switch-over (they must be identical),
 * before the guest goes on there and finishes its checks. Prints downtime, total time and the guest's results.
 *
 * <p>What it catches: with our marks of RX frames removed, the memories differed after the second move (the UDP
 * stream, at a rate the guest keeps up with, leaves RX buffers posted when the vCPUs stop, and the backend fills them
 * before QEMU stops its rings: pages only the dirty log can tell QEMU about). What it cannot catch: used-ring logging
 * removed went unnoticed (QEMU marks a used ring dirty itself when it unmaps it at the stop); {@code
 * DirtyLoggingTest} holds the backend to every page, one by one. The comparison is checked on itself at the first
 * move (one byte changed on purpose is one differing page).
 */
@Tag("peer")
class QemuMigrationTest {
    static final int PAIRS = 4;
    static final int DOWN_BYTES = 2 << 20;

    @TempDir
    Path dir;

    /**
     * @param layout "split" or "packed" ({@code packed=on})
     * @param moves  migrations in all, alternating between the two devices (there and back is two)
     */
    /**
     * What the test reads of the two devices: whether one logs, its RX frames, the features its frontend negotiated
     * (-1: not known).
     */
    interface Devices {
        boolean logging(int which) throws Exception;

        long rxPackets(int which) throws Exception;

        long features(int which) throws Exception;
    }

    @ParameterizedTest(name = "{0} ring, {1} moves, {2}")
    @CsvSource({"split,6,in-process", "packed,2,in-process", "split,2,one serve with two --vm"})
    @Timeout(480)
    void guestMovesBetweenTwoBackendsWithoutLosingAByte(String layout, int moves, String backends) throws Exception {
        Peers.requireRoot("TAP devices and a bridge in a network namespace");
        Peers.require("qemu-system-x86_64", "QEMU");
        String devOpts = layout.equals("packed") ? "packed=on" : "";
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
        // the guest streams for as long as the moves take (about 10 s each), plus the cancelled and failed ones
        int seconds = 25 + 10 * moves;

        Path[] socks = {dir.resolve("a.sock"), dir.resolve("b.sock")};
        // the devices (their TAP queues) close before the namespace
        try (TestNetns ns = TestNetns.create(); Closers closers = new Closers()) {
            Devices d;
            if (backends.equals("in-process")) {
                TapBackend backendA = ns.inside(() -> TapBackend.open(tapA, PAIRS));
                TapBackend backendB = ns.inside(() -> TapBackend.open(tapB, PAIRS));
                NetDevice devA = new NetDevice(NetDevice.Config.of("mig-a", PAIRS), backendA);
                closers.add(devA);
                closers.add(VhostUserServer.listen(socks[0], devA));
                NetDevice devB = new NetDevice(NetDevice.Config.of("mig-b", PAIRS), backendB);
                closers.add(devB);
                closers.add(VhostUserServer.listen(socks[1], devB));
                NetDevice[] devs = {devA, devB};
                d = new Devices() {
                    public boolean logging(int which) {
                        return devs[which].isLogging();
                    }

                    public long rxPackets(int which) {
                        return devs[which].counters().get(0).packets();
                    }

                    public long features(int which) {
                        return devs[which].lastNegotiatedFeatures();
                    }
                };
            } else {
                // the daemon as operators run it: one serve, both VMs as --vm, inside the namespace with its TAPs
                ns.ip("link", "set", "lo", "up");
                List<String> cmd = new ArrayList<>(List.of("ip", "netns", "exec", ns.name()));
                cmd.addAll(io.mqvirtio.cli.Launcher.command("serve",
                        "--vm", "socket-path=" + socks[0] + ",queues=" + PAIRS + ",tap=" + tapA + ",name=a",
                        "--vm", "socket-path=" + socks[1] + ",queues=" + PAIRS + ",tap=" + tapB + ",name=b",
                        "--metrics", "127.0.0.1:0"));
                io.mqvirtio.cli.Launcher.Run serve = io.mqvirtio.cli.Launcher.start(dir, "serve", cmd);
                closers.add(serve);
                int metrics = Integer.parseInt(serve.awaitErr("metrics on http://127\\.0\\.0\\.1:(\\d+)/metrics", 30_000));
                serve.awaitErr("listening on .*b\\.sock", 30_000);
                serve.awaitErr("listening on .*a\\.sock", 30_000);
                String[] names = {"a", "b"};
                d = new Devices() {
                    String scrape() throws Exception {
                        return ns.inside(() -> io.mqvirtio.cli.Launcher.get("127.0.0.1", metrics, "/metrics")).body();
                    }

                    public boolean logging(int which) throws Exception {
                        return scrape().contains("mqvirtio_device_logging{device=\"" + names[which] + "\"} 1");
                    }

                    public long rxPackets(int which) throws Exception {
                        Matcher m = Pattern.compile("mqvirtio_queue_packets_total\\{device=\"" + names[which]
                                + "\",queue=\"0\",direction=\"rx\"\\} (\\d+)").matcher(scrape());
                        return m.find() ? Long.parseLong(m.group(1)) : -1;
                    }

                    public long features(int which) {
                        return -1;
                    }
                };
            }
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
            List<Process> qemus = new ArrayList<>();
            java.util.concurrent.atomic.AtomicBoolean blasting = new java.util.concurrent.atomic.AtomicBoolean(true);
            try (java.net.DatagramSocket udp = ns.inside(() -> new java.net.DatagramSocket(new InetSocketAddress(host, 0)))) {
                Vm cur = Vm.start(this, runGuest, repo, script, socks[0], "vm0", devOpts, guest, host, down, seconds, null);
                qemus.add(cur.process);
                awaitLine(cur.log, "MQV-RESULT phase=traffic", cur.process, 240);
                // UDP towards the guest besides its TCP stream, so that the backend writes RX buffers right up to
                // the moment the rings stop (what only the dirty log can tell the destination about); slow enough
                // (8 frames a millisecond) for the guest to keep buffers posted: a flood leaves the ring empty
                Thread.ofPlatform().daemon().name("udp-blast").start(() -> {
                    byte[] payload = new byte[1200];
                    try {
                        java.net.InetAddress to = java.net.InetAddress.getByName(guest);
                        for (int i = 0; blasting.get(); i++) {
                            udp.send(new java.net.DatagramPacket(payload, payload.length, to, 9000 + (i & 7)));
                            if ((i & 7) == 0) {
                                Thread.sleep(1);
                            }
                        }
                    } catch (Exception stopped) {
                        // socket closed
                    }
                });
                Thread.sleep(2000);

                // A destination that is not there: the migration fails and the VM runs on at the source.
                cur.qmp.execute("{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"tcp:127.0.0.1:" + freePort() + "\"}}", 10_000);
                assertThat(awaitMigration(cur.qmp, 30)).as("migration to nobody").containsPattern("\"status\": ?\"failed\"");
                assertThat(cur.qmp.execute("{\"execute\":\"query-status\"}", 10_000)).containsPattern("\"status\": ?\"running\"");
                assertThat(d.logging(0)).as("logging ends with the failed migration").isFalse();

                // A migration cancelled half-way: the VM runs on at the source, its device still serving it.
                Vm cancelled = Vm.start(this, runGuest, repo, script, socks[1], "cancelled", devOpts, guest, host, down,
                        seconds, freePort());
                qemus.add(cancelled.process);
                // a bandwidth limit keeps the migration running long enough to be cancelled
                cur.qmp.execute("{\"execute\":\"migrate-set-parameters\",\"arguments\":{\"max-bandwidth\":8388608}}", 10_000);
                cur.qmp.execute("{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"tcp:127.0.0.1:" + cancelled.port + "\"}}", 10_000);
                Thread.sleep(1500);
                assertThat(d.logging(0)).as("the source device logs while the migration runs").isTrue();
                cur.qmp.execute("{\"execute\":\"migrate_cancel\"}", 10_000);
                assertThat(awaitMigration(cur.qmp, 30)).as("cancelled migration").containsPattern("\"status\": ?\"cancelled\"");
                assertThat(cur.qmp.execute("{\"execute\":\"query-status\"}", 10_000)).containsPattern("\"status\": ?\"running\"");
                cur.qmp.execute("{\"execute\":\"migrate-set-parameters\",\"arguments\":{\"max-bandwidth\":0}}", 10_000);
                cancelled.close();
                Peers.stop(cancelled.process, 5000);
                long before = d.rxPackets(0);
                Thread.sleep(1000);
                assertThat(d.rxPackets(0)).as("the source still delivers after the cancel").isGreaterThan(before);

                List<String> report = new ArrayList<>();
                for (int move = 1; move <= moves; move++) {
                    int to = move % 2;
                    Vm dst = Vm.start(this, runGuest, repo, script, socks[to], "vm" + move, devOpts, guest, host, down,
                            seconds, freePort());
                    qemus.add(dst.process);
                    assertThat(cur.qmp.execute("{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"tcp:127.0.0.1:"
                            + dst.port + "\"}}", 10_000)).as("migrate").contains("\"return\"");
                    String status = awaitMigration(cur.qmp, 120);
                    assertThat(status).as("migration %d", move).containsPattern("\"status\": ?\"completed\"");
                    String dstStatus = "";
                    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
                    while (System.nanoTime() < deadline) {
                        dstStatus = dst.qmp.execute("{\"execute\":\"query-status\"}", 10_000);
                        if (dstStatus.matches(".*\"status\": ?\"paused\".*")) {
                            break;
                        }
                        Thread.sleep(100);
                    }
                    assertThat(dstStatus).as("the destination has the guest, paused").containsPattern("\"status\": ?\"paused\"");
                    // Both stopped: the source at the switch-over, the destination before its first instruction. Every
                    // page of guest memory must be the same on both sides.
                    if (move == 1) {
                        // the comparison itself: one byte changed in the source's memory is one page that differs
                        Path srcMem = guestMemory(cur.pid);
                        long at = (512L << 20) + 12345;
                        byte was = poke(srcMem, at, null);
                        poke(srcMem, at, (byte) ~was);
                        assertThat(differingPages(srcMem, guestMemory(dst.pid))).as("a page changed on purpose")
                                .containsExactly(at & -4096L);
                        poke(srcMem, at, was);
                    }
                    List<Long> differ = differingPages(guestMemory(cur.pid), guestMemory(dst.pid));
                    assertThat(differ).as("guest pages that differ between source and destination after move %d", move).isEmpty();
                    assertThat(dst.qmp.execute("{\"execute\":\"cont\"}", 10_000)).contains("\"return\"");
                    report.add("move " + move + ": downtime " + field(status, "downtime") + " ms, total "
                            + field(status, "total-time") + " ms");
                    cur.qmp.execute("{\"execute\":\"quit\"}", 10_000);
                    assertThat(cur.process.waitFor(30, TimeUnit.SECONDS)).as("the source QEMU quits").isTrue();
                    cur.close();
                    cur = dst;
                    assertThat(d.logging(1 - to)).as("the old source logs no more").isFalse();
                }
                blasting.set(false);
                assertThat(cur.process.waitFor(seconds + 120, TimeUnit.SECONDS)).as("the guest finished").isTrue();
                String console = Files.readString(cur.log);
                Map<String, String> r = QemuGuestTest.results(console);
                String context = "\n--- last console (tail) ---\n" + Peers.tail(cur.log, 40);
                System.out.println("QemuMigrationTest[" + layout + ", " + backends + "]: " + report + "; guest " + r);
                assertThat(console).as(context).contains("MQV-DONE rc=0");
                assertThat(Integer.parseInt(r.getOrDefault("downloads", "0"))).as(context).isPositive();
                assertThat(r).as(context).containsEntry("bad_downloads", "0").containsEntry("set1", "0")
                        .containsEntry("ping_after_set1", "0").containsEntry("setback", "0")
                        .containsEntry("ping_after_setback", "0");
                if (d.features(moves % 2) != -1) {
                    assertThat(io.mqvirtio.virtio.VirtioFeatures.has(d.features(moves % 2),
                            io.mqvirtio.net.VirtioNet.F_GUEST_ANNOUNCE)).as("GUEST_ANNOUNCE negotiated: the guest announces itself").isTrue();
                }
                cur.close();
            } finally {
                blasting.set(false);
                for (Process p : qemus) {
                    Peers.stop(p, 5000);
                }
                http.stop(0);
            }
        }
    }

    /** What a test opened, closed last to first. */
    private static final class Closers extends ArrayList<AutoCloseable> implements AutoCloseable {
        @Override
        public void close() throws Exception {
            for (int i = size() - 1; i >= 0; i--) {
                get(i).close();
            }
        }
    }

    /** One QEMU with the test guest: its process, QMP monitor, console log and pid file. */
    private record Vm(Process process, Qmp qmp, Path log, Path pid, Integer port) implements AutoCloseable {
        static Vm start(QemuMigrationTest t, Path runGuest, Path repo, Path script, Path sock, String name, String devOpts,
                        String guest, String host, byte[] down, int seconds, Integer incomingPort) throws Exception {
            Path qmp = t.dir.resolve(name + ".qmp"), log = t.dir.resolve(name + ".log"), pid = t.dir.resolve(name + ".pid");
            // -S: a destination stays paused once the guest has arrived, until the memories are compared
            List<String> extra = incomingPort == null ? List.of() : List.of("-S", "-incoming", "tcp:127.0.0.1:" + incomingPort);
            Process p = t.guest(runGuest, repo, script, sock, qmp, log, pid, devOpts, guest, host, down, seconds, extra);
            try {
                return new Vm(p, Qmp.connect(qmp, p, 60_000), log, pid, incomingPort);
            } catch (Exception e) {
                Peers.stop(p, 5000);
                throw e;
            }
        }

        @Override
        public void close() throws java.io.IOException {
            qmp.close();
        }
    }

    private static int freePort() throws java.io.IOException {
        try (ServerSocket s = new ServerSocket(0)) {
            return s.getLocalPort();
        }
    }

    /** Polls query-migrate until the migration completed, failed or was cancelled; returns the last answer. */
    private static String awaitMigration(Qmp q, int seconds) throws Exception {
        String status = "";
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds);
        while (System.nanoTime() < deadline) {
            status = q.execute("{\"execute\":\"query-migrate\"}", 10_000);
            if (status.matches(".*\"status\": ?\"(completed|failed|cancelled)\".*")) {
                return status;
            }
            Thread.sleep(200);
        }
        return status;
    }

    /** QEMU's guest RAM: the memory-backend-memfd it shares with the backend, found among its descriptors. */
    private static Path guestMemory(Path pidFile) throws Exception {
        long pid = Long.parseLong(Files.readString(pidFile).trim());
        try (var fds = Files.list(Path.of("/proc/" + pid + "/fd"))) {
            for (Path fd : fds.toList()) {
                try {
                    String target = Files.readSymbolicLink(fd).toString();
                    if (target.startsWith("/memfd:mem") && Files.size(fd) >= 1L << 30) {
                        return fd;
                    }
                } catch (java.io.IOException gone) {
                    // closed while listed
                }
            }
        }
        throw new AssertionError("QEMU " + pid + " has no guest memory memfd");
    }

    /** Reads the byte at {@code at} of a memory file and, if {@code value} is given, writes it there; returns the old. */
    private static byte poke(Path mem, long at, Byte value) throws Exception {
        try (var c = java.nio.channels.FileChannel.open(mem, java.nio.file.StandardOpenOption.READ,
                java.nio.file.StandardOpenOption.WRITE)) {
            java.nio.ByteBuffer b = java.nio.ByteBuffer.allocate(1);
            c.read(b, at);
            if (value != null) {
                c.write(java.nio.ByteBuffer.wrap(new byte[] {value}), at);
            }
            return b.get(0);
        }
    }

    /** Guest-physical addresses (at most 10) of 4 KiB pages whose bytes differ between the two memory files. */
    private static List<Long> differingPages(Path a, Path b) throws Exception {
        List<Long> out = new ArrayList<>();
        try (var ca = java.nio.channels.FileChannel.open(a); var cb = java.nio.channels.FileChannel.open(b)) {
            long size = Math.min(ca.size(), cb.size());
            java.nio.ByteBuffer ba = java.nio.ByteBuffer.allocateDirect(1 << 20), bb = java.nio.ByteBuffer.allocateDirect(1 << 20);
            for (long off = 0; off < size && out.size() < 10; off += 1 << 20) {
                ba.clear();
                bb.clear();
                while (ba.hasRemaining() && ca.read(ba, off + ba.position()) > 0) { }
                while (bb.hasRemaining() && cb.read(bb, off + bb.position()) > 0) { }
                for (int p = 0; p < (1 << 20) && out.size() < 10; p += 4096) {
                    if (ba.slice(p, 4096).mismatch(bb.slice(p, 4096)) != -1) {
                        out.add(off + p);
                    }
                }
            }
        }
        return out;
    }

    private Process guest(Path runGuest, Path repo, Path script, Path sock, Path qmp, Path log, Path pid, String devOpts,
                          String guest, String host, byte[] down, int seconds, List<String> extra) throws Exception {
        List<String> cmd = new ArrayList<>(List.of(runGuest.toString(), "--vhost-user", sock.toString(),
                "--queues", String.valueOf(PAIRS), "--smp", "4", "--script", script.toString(), "--log", log.toString(),
                "--timeout", "420", "--qmp", qmp.toString(), "--pidfile", pid.toString(), "--arg", "ip=" + guest + "/24", "--arg", "peer=" + host,
                "--arg", "md5=" + QemuGuestTest.md5(down), "--arg", "seconds=" + seconds, "--arg", "pairs=" + PAIRS,
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
