package io.mqvirtio.peers;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.backend.TapBackend;
import io.mqvirtio.net.NetDevice;
import io.mqvirtio.net.QueueCounters;
import io.mqvirtio.vhostuser.VhostUserServer;
import com.sun.net.httpserver.HttpServer;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * The heart of the mission, end to end: a real Linux guest (its virtio_net driver) in QEMU, four vCPUs and four
 * queue pairs, through QEMU's vhost-user into our per-pair workers, out through a multiqueue TAP device in a
 * network namespace this test creates, and back. The guest changes its queue count with ethtool, pings the host
 * side from every vCPU, and moves a few MB each way, compared by checksum; our counters must show traffic on all
 * four TX and all four RX queues.
 */
@Tag("peer")
public class QemuGuestTest {
    static final int PAIRS = 4;
    static final int BULK_KB = 4096;

    @TempDir
    Path dir;

    /**
     * Workers woken by kicks (0), and with a poll window after traffic (200 µs: kicks off while polling); the split
     * ring (QEMU's default) and the packed one ({@code packed=on}).
     */
    @ParameterizedTest(name = "poll window {0} µs, device options \"{1}\"")
    @CsvSource(value = {"0,", "200,", "0,packed=on"}, emptyValue = "")
    @Timeout(420)
    void linuxGuestUsesFourQueuePairs(int pollMicros, String devOpts) throws Exception {
        Path sock = dir.resolve("vm.sock");
        try (PeerLab lab = PeerLab.open(dir)) {
            TapBackend backend = lab.tap("mqvq", PAIRS);
            String host = lab.host();
            byte[] down = new byte[BULK_KB * 1024];
            new Random(42).nextBytes(down);
            ServerSocket upload = lab.own(lab.inside(() -> new ServerSocket(5001, 4, InetAddress.getByName(host))));
            HttpServer http = lab.inside(() -> HttpServer.create(new InetSocketAddress(host, 5002), 4));
            http.createContext("/down", ex -> {
                ex.sendResponseHeaders(200, down.length);
                try (OutputStream o = ex.getResponseBody()) {
                    o.write(down);
                }
            });
            http.start();
            lab.own(() -> http.stop(0));
            CompletableFuture<String> uploaded = CompletableFuture.supplyAsync(() -> receive(upload, BULK_KB * 1024));

            NetDevice dev = lab.own(new NetDevice(
                    new NetDevice.Config("qemu-test", PAIRS, 1500, false, new int[0], pollMicros), backend));
            lab.own(VhostUserServer.listen(sock, dev));
            Guest g = lab.guest("vm").vhostUser(sock).queues(PAIRS).smp(4).devOpts(devOpts).script("vhost-user-net.sh")
                    .timeout(300).arg("pairs", PAIRS).arg("ip", lab.guestCidr()).arg("peer", host).arg("bulkkb", BULK_KB)
                    .arg("timeout", 240).start();
            assertThat(g.awaitExit(330)).as("guest finished%s", g.context()).isTrue();
            Map<String, String> r = g.results();
            String context = g.context();

            assertThat(g.consoleText()).as(context).contains("MQV-DONE rc=0");
            assertThat(r).as(context).containsEntry("max_combined", "4").containsEntry("combined", "4")
                    .containsEntry("set1", "0").containsEntry("combined_after_set1", "1")
                    .containsEntry("setback", "0").containsEntry("combined_after_setback", "4");
            for (int cpu = 0; cpu < 4; cpu++) {
                assertThat(r).as(context).containsEntry("ping_cpu" + cpu, "0");
            }
            assertThat(r).as(context).containsEntry("up_rc", "0").containsEntry("down_rc", "0")
                    .containsEntry("down_bytes", String.valueOf(down.length))
                    .containsEntry("down_md5", md5(down));
            assertThat(uploaded.get(30, TimeUnit.SECONDS)).as(context).isEqualTo(r.get("up_md5"));

            boolean packed = io.mqvirtio.virtio.VirtioFeatures.has(dev.lastNegotiatedFeatures(),
                    io.mqvirtio.virtio.VirtioFeatures.F_RING_PACKED);
            assertThat(packed).as("packed ring negotiated with \"%s\"", devOpts).isEqualTo(devOpts != null
                    && devOpts.contains("packed=on"));
            List<QueueCounters.Snapshot> c = dev.counters();
            for (int q = 0; q < PAIRS; q++) {
                assertThat(c.get(2 * q).packets()).as("RX queue %d packets; counters %s%s", q, c, context).isPositive();
                assertThat(c.get(2 * q + 1).packets()).as("TX queue %d packets; counters %s%s", q, c, context).isPositive();
                assertThat(c.get(2 * q).errors() + c.get(2 * q + 1).errors()).as("errors on pair %d", q).isZero();
            }
        }
    }

    /** Accepts one connection, reads exactly {@code n} bytes, returns their MD5. */
    private static String receive(ServerSocket s, int n) {
        try (Socket c = s.accept(); InputStream in = c.getInputStream()) {
            c.setSoTimeout(120_000);
            byte[] all = in.readNBytes(n);
            return md5(all);
        } catch (Exception e) {
            return "upload failed: " + e;
        }
    }

    static String md5(byte[] b) {
        try {
            return HexFormat.of().formatHex(MessageDigest.getInstance("MD5").digest(b));
        } catch (Exception e) {
            throw new IllegalStateException(e);
        }
    }
}
