package io.mqvirtio.peers;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.backend.TapBackend;
import io.mqvirtio.cli.Launcher;
import io.mqvirtio.cli.MetricsServer;
import io.mqvirtio.net.NetDevice;
import io.mqvirtio.net.QueueCounters;
import io.mqvirtio.vhostuser.VhostUserServer;
import java.net.InetSocketAddress;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * Client mode against a real QEMU that listens ({@code -chardev socket,server=on,wait=off}): our backend connects
 * to it (as {@code serve --client} does), a Linux guest with two vCPUs finds two queue pairs ({@code ethtool -l}),
 * switches to one and back, and pings the host side of a multiqueue TAP (in a namespace of this test's own) from
 * every vCPU. Meanwhile the metrics endpoint, bound to that namespace's loopback, is read from outside the device:
 * it shows the frontend connected and the traffic on every TX queue, and at the end exactly our counters.
 */
@Tag("peer")
class QemuClientModeTest {
    static final int PAIRS = 2;
    static final int VCPUS = 2;
    static final Pattern SAMPLE = Pattern.compile(
            "(?m)^mqvirtio_queue_(\\w+)_total\\{device=\"qemu-client\",direction=\"(rx|tx)\",queue=\"(\\d+)\"\\} ([0-9.E]+)$");

    @TempDir
    Path dir;

    @Test
    @Timeout(300)
    void guestUsesEveryPairThroughABackendThatConnects() throws Exception {
        Path sock = dir.resolve("qemu.sock");
        try (PeerLab lab = PeerLab.open(dir)) {
            TapBackend backend = lab.tap("mqvc", PAIRS);
            assertThat(backend.createdDevice()).isTrue();
            NetDevice dev = lab.own(new NetDevice(NetDevice.Config.of("qemu-client", PAIRS), backend));
            VhostUserServer server = lab.own(VhostUserServer.connect(sock, dev));
            MetricsServer metrics = lab.own(lab.inside(() -> MetricsServer.start(new InetSocketAddress("127.0.0.1", 0),
                    List.of(new MetricsServer.Source(dev, sock.toString(), backend.describe(), server::hasSession)))));
            int port = metrics.address().getPort();
            Guest g = lab.guest("vm").vhostUser(sock).server().queues(PAIRS).smp(VCPUS).script("multiqueue.sh")
                    .timeout(200).arg("pairs", PAIRS).arg("ip", lab.guestCidr()).arg("peer", lab.host())
                    .arg("timeout", 150).start();

            // While the guest runs: the endpoint, read as a scraper would, sees the frontend and the traffic.
            boolean sawConnected = false;
            long maxTx = 0;
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(230);
            while (!g.awaitExit(1)) {
                assertThat(System.nanoTime()).as("guest finished%s", g.context()).isLessThan(deadline);
                Launcher.Http h = lab.inside(() -> Launcher.get("127.0.0.1", port, "/metrics"));
                assertThat(h.status()).isEqualTo(200);
                sawConnected |= h.body().contains("mqvirtio_frontend_connected{device=\"qemu-client\"} 1.0");
                maxTx = Math.max(maxTx, sum(parse(h.body()), "packets", "tx"));
            }
            String context = g.context();
            assertThat(g.process().exitValue()).as(context).isZero();
            Map<String, String> r = g.results();
            assertThat(g.consoleText()).as(context).contains("MQV-DONE rc=0");
            assertThat(r).as(context).containsEntry("max_combined", String.valueOf(PAIRS))
                    .containsEntry("combined", String.valueOf(PAIRS)).containsEntry("set1", "0")
                    .containsEntry("combined_after_set1", "1").containsEntry("setback", "0")
                    .containsEntry("combined_after_setback", String.valueOf(PAIRS));
            for (int cpu = 0; cpu < VCPUS; cpu++) {
                assertThat(r).as(context).containsEntry("ping_cpu" + cpu, "0");
            }
            assertThat(sawConnected).as("the endpoint showed the frontend connected while the guest ran").isTrue();
            assertThat(maxTx).as("TX traffic visible while the guest ran").isPositive();

            // QEMU has gone: the counters stand still, and both formats report exactly them.
            List<QueueCounters.Snapshot> c = dev.counters();
            for (int q = 0; q < PAIRS; q++) {
                assertThat(c.get(2 * q + 1).packets()).as("TX queue %d packets; %s%s", q, c, context).isPositive();
                assertThat(c.get(2 * q).errors() + c.get(2 * q + 1).errors()).as("errors on pair %d", q).isZero();
            }
            assertThat(c.get(0).packets() + c.get(2).packets()).as("RX packets").isPositive();
            Map<String, Long> prom = parse(lab.inside(() -> Launcher.get("127.0.0.1", port, "/metrics")).body());
            assertThat(prom).hasSize(6 * 2 * PAIRS);
            for (int i = 0; i < c.size(); i++) {
                String k = (i % 2 == 0 ? "rx" : "tx") + (i / 2);
                QueueCounters.Snapshot s = c.get(i);
                assertThat(prom).containsEntry("packets/" + k, s.packets()).containsEntry("bytes/" + k, s.bytes())
                        .containsEntry("drops/" + k, s.drops()).containsEntry("errors/" + k, s.errors())
                        .containsEntry("kicks/" + k, s.kicks()).containsEntry("notifications/" + k, s.notifications());
            }
            String json = lab.inside(() -> Launcher.get("127.0.0.1", port, "/stats")).body();
            assertThat(json).contains("\"name\":\"qemu-client\"").contains("\"pairs\":" + PAIRS)
                    .contains("\"pair\":1,\"direction\":\"tx\",\"packets\":" + c.get(3).packets() + ",");
        }
    }

    /** "field/rxN" → value, from the Prometheus text. */
    static Map<String, Long> parse(String prometheus) {
        Map<String, Long> m = new HashMap<>();
        Matcher s = SAMPLE.matcher(prometheus);
        while (s.find()) {
            m.put(s.group(1) + "/" + s.group(2) + s.group(3), (long) Double.parseDouble(s.group(4)));
        }
        return m;
    }

    static long sum(Map<String, Long> m, String field, String direction) {
        long t = 0;
        for (var e : m.entrySet()) {
            if (e.getKey().startsWith(field + "/" + direction)) {
                t += e.getValue();
            }
        }
        return t;
    }
}
