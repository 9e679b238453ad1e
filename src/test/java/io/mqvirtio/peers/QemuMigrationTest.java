package io.mqvirtio.peers;

import static org.assertj.core.api.Assertions.assertThat;

import com.sun.net.httpserver.HttpServer;
import io.mqvirtio.backend.TapBackend;
import io.mqvirtio.cli.Launcher;
import io.mqvirtio.net.NetDevice;
import io.mqvirtio.vhostuser.VhostUserServer;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.DatagramPacket;
import java.net.DatagramSocket;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.junit.jupiter.api.io.TempDir;

/**
 * Live migration with the real thing: a Linux guest (4 vCPUs, 4 queue pairs) in QEMU 10, served by one of our net
 * devices (in this JVM, in a {@code mqvirtio serve} process with both VMs as {@code --vm}s, or in one of two
 * {@code serve} processes), moves to a second QEMU served by another (each device with its own socket and its own
 * multiqueue TAP, both TAPs on one bridge in the peer lab's network namespace, where the host side serves a bulk
 * stream and takes uploads). The destination waits with {@code -incoming}; the test drives {@code migrate} over QMP
 * while the guest downloads 2 MB again and again and checks each by MD5, uploads the same bytes again and again (the
 * host checks each), pings from every vCPU, and is blasted with UDP; the destination starts paused ({@code -S})
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
    static final int VCPUS = 4;
    static final int DOWN_BYTES = 2 << 20;

    @TempDir
    Path dir;

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
    @CsvSource({"split,6,in-process", "packed,2,in-process", "split,2,one serve with two --vm",
            "split,2,two serve processes"})
    @Timeout(480)
    void guestMovesBetweenTwoBackendsWithoutLosingAByte(String layout, int moves, String backends) throws Exception {
        String devOpts = layout.equals("packed") ? "packed=on" : "";
        byte[] down = new byte[DOWN_BYTES];
        new Random(7).nextBytes(down);
        String md5 = QemuGuestTest.md5(down);
        // the guest streams for as long as the moves take (about 10 s each), plus the cancelled and failed ones
        int seconds = 25 + 10 * moves;
        Path[] socks = {dir.resolve("a.sock"), dir.resolve("b.sock")};
        try (PeerLab lab = PeerLab.open(dir)) {
            String tapA = lab.ifname("mqma"), tapB = lab.ifname("mqmb");
            Devices d = switch (backends) {
                case "in-process" -> inProcess(lab, socks);
                case "one serve with two --vm" -> {
                    Launcher.Run serve = lab.serve("serve",
                            "--vm", "socket-path=" + socks[0] + ",queues=" + PAIRS + ",tap=" + tapA + ",name=a",
                            "--vm", "socket-path=" + socks[1] + ",queues=" + PAIRS + ",tap=" + tapB + ",name=b",
                            "--metrics", "127.0.0.1:0");
                    int metrics = metricsPort(serve);
                    serve.awaitErr("listening on .*b\\.sock", 30_000);
                    serve.awaitErr("listening on .*a\\.sock", 30_000);
                    yield scraped(lab, new int[] {metrics, metrics});
                }
                case "two serve processes" -> {
                    int[] ports = new int[2];
                    String[] taps = {tapA, tapB};
                    for (int i = 0; i < 2; i++) {
                        Launcher.Run serve = lab.serve("serve-" + "ab".charAt(i), "--socket-path", socks[i].toString(),
                                "--queues", String.valueOf(PAIRS), "--tap", taps[i], "--name", "ab".substring(i, i + 1),
                                "--metrics", "127.0.0.1:0");
                        ports[i] = metricsPort(serve);
                        serve.awaitErr("listening on ", 30_000);
                    }
                    yield scraped(lab, ports);
                }
                default -> throw new IllegalArgumentException(backends);
            };
            String host = lab.host();
            lab.bridge("mqbr", tapA, tapB);
            HttpServer http = lab.inside(() -> HttpServer.create(new InetSocketAddress(host, 5002), 8));
            http.createContext("/down", ex -> {
                ex.sendResponseHeaders(200, down.length);
                try (OutputStream o = ex.getResponseBody()) {
                    o.write(down);
                }
            });
            http.start();
            lab.own(() -> http.stop(0));
            Uploads uploads = lab.own(new Uploads(lab.inside(() -> new ServerSocket(5001, 8, InetAddress.getByName(host))),
                    md5));
            AtomicBoolean blasting = new AtomicBoolean(true);
            lab.own(() -> blasting.set(false));
            DatagramSocket udp = lab.own(lab.inside(() -> new DatagramSocket(new InetSocketAddress(host, 0))));

            Guest cur = vm(lab, "vm0", socks[0], devOpts, md5, seconds, false);
            cur.awaitLine("MQV-RESULT phase=traffic", 240);
            // UDP towards the guest besides its TCP stream, so that the backend writes RX buffers right up to the
            // moment the rings stop (what only the dirty log can tell the destination about); slow enough (8 frames
            // a millisecond) for the guest to keep buffers posted: a flood leaves the ring empty
            String guest = lab.guestIp();
            Thread.ofPlatform().daemon().name("udp-blast").start(() -> {
                byte[] payload = new byte[1200];
                try {
                    InetAddress to = InetAddress.getByName(guest);
                    for (int i = 0; blasting.get(); i++) {
                        udp.send(new DatagramPacket(payload, payload.length, to, 9000 + (i & 7)));
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
            cur.qmp().execute("{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"tcp:127.0.0.1:" + freePort() + "\"}}", 10_000);
            assertThat(awaitMigration(cur.qmp(), 30)).as("migration to nobody").containsPattern("\"status\": ?\"failed\"");
            assertThat(cur.qmp().execute("{\"execute\":\"query-status\"}", 10_000)).containsPattern("\"status\": ?\"running\"");
            assertThat(d.logging(0)).as("logging ends with the failed migration").isFalse();

            // A migration cancelled half-way: the VM runs on at the source, its device still serving it.
            Guest cancelled = vm(lab, "cancelled", socks[1], devOpts, md5, seconds, true);
            // a bandwidth limit keeps the migration running long enough to be cancelled
            cur.qmp().execute("{\"execute\":\"migrate-set-parameters\",\"arguments\":{\"max-bandwidth\":8388608}}", 10_000);
            cur.qmp().execute("{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"tcp:127.0.0.1:" + cancelled.incomingPort()
                    + "\"}}", 10_000);
            Thread.sleep(1500);
            assertThat(d.logging(0)).as("the source device logs while the migration runs").isTrue();
            cur.qmp().execute("{\"execute\":\"migrate_cancel\"}", 10_000);
            assertThat(awaitMigration(cur.qmp(), 30)).as("cancelled migration").containsPattern("\"status\": ?\"cancelled\"");
            assertThat(cur.qmp().execute("{\"execute\":\"query-status\"}", 10_000)).containsPattern("\"status\": ?\"running\"");
            cur.qmp().execute("{\"execute\":\"migrate-set-parameters\",\"arguments\":{\"max-bandwidth\":0}}", 10_000);
            cancelled.close();
            long before = d.rxPackets(0);
            Thread.sleep(1000);
            assertThat(d.rxPackets(0)).as("the source still delivers after the cancel").isGreaterThan(before);

            List<String> report = new ArrayList<>();
            for (int move = 1; move <= moves; move++) {
                int to = move % 2;
                Guest dst = vm(lab, "vm" + move, socks[to], devOpts, md5, seconds, true);
                assertThat(cur.qmp().execute("{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"tcp:127.0.0.1:"
                        + dst.incomingPort() + "\"}}", 10_000)).as("migrate").contains("\"return\"");
                String status = awaitMigration(cur.qmp(), 120);
                assertThat(status).as("migration %d", move).containsPattern("\"status\": ?\"completed\"");
                String dstStatus = "";
                long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
                while (System.nanoTime() < deadline) {
                    dstStatus = dst.qmp().execute("{\"execute\":\"query-status\"}", 10_000);
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
                    Path srcMem = guestMemory(cur);
                    long at = (512L << 20) + 12345;
                    byte was = poke(srcMem, at, null);
                    poke(srcMem, at, (byte) ~was);
                    assertThat(differingPages(srcMem, guestMemory(dst))).as("a page changed on purpose")
                            .containsExactly(at & -4096L);
                    poke(srcMem, at, was);
                }
                List<Long> differ = differingPages(guestMemory(cur), guestMemory(dst));
                assertThat(differ).as("guest pages that differ between source and destination after move %d", move).isEmpty();
                assertThat(dst.qmp().execute("{\"execute\":\"cont\"}", 10_000)).contains("\"return\"");
                report.add("move " + move + ": downtime " + field(status, "downtime") + " ms, total "
                        + field(status, "total-time") + " ms");
                cur.qmp().execute("{\"execute\":\"quit\"}", 10_000);
                assertThat(cur.awaitExit(30)).as("the source QEMU quits").isTrue();
                cur.close();
                cur = dst;
                assertThat(d.logging(1 - to)).as("the old source logs no more").isFalse();
            }
            blasting.set(false);
            assertThat(cur.awaitExit(seconds + 120)).as("the guest finished%s", cur.context()).isTrue();
            Map<String, String> r = cur.results();
            String context = cur.context();
            System.out.println("QemuMigrationTest[" + layout + ", " + backends + "]: " + report + "; guest " + r
                    + "; uploads checked by the host: " + uploads);
            assertThat(cur.consoleText()).as(context).contains("MQV-DONE rc=0");
            assertThat(Integer.parseInt(r.getOrDefault("downloads", "0"))).as(context).isPositive();
            assertThat(r).as(context).containsEntry("bad_downloads", "0").containsEntry("set1", "0")
                    .containsEntry("ping_after_set1", "0").containsEntry("setback", "0")
                    .containsEntry("ping_after_setback", "0");
            // what the guest sent: every upload that arrived whole is bit-exact, and there were some
            assertThat(uploads.good.get()).as("uploads from the guest, whole and bit-exact; %s%s", uploads, context)
                    .isPositive();
            assertThat(uploads.corrupt.get()).as("uploads whose bytes differ; %s", uploads).isZero();
            assertThat(Long.parseLong(r.getOrDefault("pings_received", "0"))).as("pings answered, from %d vCPUs%s",
                    VCPUS, context).isPositive();
            if (d.features(moves % 2) != -1) {
                assertThat(io.mqvirtio.virtio.VirtioFeatures.has(d.features(moves % 2),
                        io.mqvirtio.net.VirtioNet.F_GUEST_ANNOUNCE)).as("GUEST_ANNOUNCE negotiated: the guest announces itself").isTrue();
            }
        }
    }

    /** Two of our devices in this JVM, each on its own TAP of the lab and its own socket. */
    private static Devices inProcess(PeerLab lab, Path[] socks) throws Exception {
        NetDevice[] devs = new NetDevice[2];
        for (int i = 0; i < 2; i++) {
            TapBackend tap = lab.tap(i == 0 ? "mqma" : "mqmb", PAIRS);
            devs[i] = lab.own(new NetDevice(NetDevice.Config.of("mig-" + "ab".charAt(i), PAIRS), tap));
            lab.own(VhostUserServer.listen(socks[i], devs[i]));
        }
        return new Devices() {
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
    }

    private static int metricsPort(Launcher.Run serve) throws Exception {
        return Integer.parseInt(serve.awaitErr("metrics on http://127\\.0\\.0\\.1:(\\d+)/metrics", 30_000));
    }

    /** Devices "a" and "b" of serve processes, read through their /metrics (on the ports given, in the namespace). */
    private static Devices scraped(PeerLab lab, int[] ports) {
        String[] names = {"a", "b"};
        return new Devices() {
            String scrape(int which) throws Exception {
                return lab.inside(() -> Launcher.get("127.0.0.1", ports[which], "/metrics")).body();
            }

            public boolean logging(int which) throws Exception {
                return scrape(which).contains("mqvirtio_device_logging{device=\"" + names[which] + "\"} 1.0");
            }

            public long rxPackets(int which) throws Exception {
                Matcher m = Pattern.compile("mqvirtio_queue_packets_total\\{device=\"" + names[which]
                        + "\",direction=\"rx\",queue=\"0\"\\} ([0-9.E]+)").matcher(scrape(which));
                return m.find() ? (long) Double.parseDouble(m.group(1)) : -1;
            }

            public long features(int which) {
                return -1;
            }
        };
    }

    /** The test guest on {@code sock}, running migrate.sh; a migration destination if {@code incoming}. */
    private static Guest vm(PeerLab lab, String name, Path sock, String devOpts, String md5, int seconds,
                            boolean incoming) throws Exception {
        Guest.Options o = lab.guest(name).vhostUser(sock).queues(PAIRS).smp(VCPUS).devOpts(devOpts).script("migrate.sh")
                .timeout(420).qmp().arg("ip", lab.guestCidr()).arg("peer", lab.host()).arg("md5", md5)
                .arg("seconds", seconds).arg("pairs", PAIRS).arg("cpus", VCPUS);
        return (incoming ? o.incoming() : o).start();
    }

    /**
     * The host's end of the guest's uploads: each connection must bring exactly the download's bytes; counted as
     * good (whole and bit-exact), corrupt (whole, other bytes) or short (the connection ended early).
     */
    private static final class Uploads implements AutoCloseable {
        final AtomicInteger good = new AtomicInteger();
        final AtomicInteger corrupt = new AtomicInteger();
        final AtomicInteger shortOnes = new AtomicInteger();
        private final ServerSocket server;

        Uploads(ServerSocket server, String md5) {
            this.server = server;
            Thread.ofPlatform().daemon().name("uploads").start(() -> {
                while (!server.isClosed()) {
                    try (Socket c = server.accept(); InputStream in = c.getInputStream()) {
                        c.setSoTimeout(90_000);
                        byte[] all = in.readNBytes(DOWN_BYTES);
                        if (all.length < DOWN_BYTES) {
                            shortOnes.incrementAndGet();
                        } else if (QemuGuestTest.md5(all).equals(md5)) {
                            good.incrementAndGet();
                        } else {
                            corrupt.incrementAndGet();
                        }
                    } catch (IOException e) {
                        if (!server.isClosed()) {
                            shortOnes.incrementAndGet();
                        }
                    }
                }
            });
        }

        @Override
        public String toString() {
            return good + " good, " + corrupt + " corrupt, " + shortOnes + " short";
        }

        @Override
        public void close() throws IOException {
            server.close();
        }
    }

    private static int freePort() throws IOException {
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
    private static Path guestMemory(Guest g) throws Exception {
        long pid = g.qemuPid();
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

    private static String field(String json, String name) {
        Matcher m = Pattern.compile("\"" + Pattern.quote(name) + "\": ?(\\d+)").matcher(json);
        return m.find() ? m.group(1) : "?";
    }
}
