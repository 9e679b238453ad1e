package io.mqvirtio.peers;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.cli.Launcher;
import io.mqvirtio.bench.Testpmd;
import java.nio.file.Path;
import java.util.ArrayList;
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
 * {@code mqvirtio serve} as a process (the launcher's jar, loopback backend, four pairs, {@code --metrics}) under
 * real traffic from DPDK's virtio-user (testpmd, txonly): the per-queue counters are read from outside the process
 * while frames flow, over Prometheus text and through {@code mqvirtio stats --watch} in a third process; then
 * SIGTERM, with testpmd still connected, stops it with status 0 and no socket file left. serve and its metrics
 * endpoint live in a network namespace of this test's own (its loopback only).
 */
@Tag("peer")
class ServeUnderTrafficTest {
    static final int PAIRS = 4;
    static final Pattern TX = Pattern.compile(
            "(?m)^mqvirtio_queue_packets_total\\{device=\"traffic\",direction=\"tx\",queue=\"(\\d+)\"\\} ([0-9.E]+)$");

    @TempDir
    Path dir;

    @Test
    @Timeout(180)
    void countersReadFromOutsideWhileTestpmdSendsThenSigterm() throws Exception {
        Path sock = dir.resolve("traffic.sock");
        try (PeerLab lab = PeerLab.open(dir)) {
            Launcher.Run r = lab.serve("serve", "--socket-path", sock.toString(), "--queues", String.valueOf(PAIRS),
                    "--loopback", "--name", "traffic", "--metrics", "127.0.0.1:0");
            int port = Integer.parseInt(r.awaitErr("metrics on http://127\\.0\\.0\\.1:(\\d+)/metrics", 30_000));
            r.awaitErr("listening on ", 30_000);
            Testpmd tp = lab.testpmd("testpmd", "net_virtio_user0,path=" + sock + ",queues=" + PAIRS + ",cq=1", PAIRS,
                    "txonly", 128);
            tp.command("start");

            // the scraper's view, while frames flow: every TX queue counts
            Map<Integer, Long> tx = Map.of();
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
            while (!allAbove(tx, 10_000)) {
                assertThat(tp.isAlive()).as("testpmd exited early:%n%s", Peers.tail(tp.log(), 30)).isTrue();
                assertThat(System.nanoTime()).as("TX counters %s; serve:%n%s", tx, r.stderr()).isLessThan(deadline);
                Thread.sleep(200);
                Launcher.Http h = lab.inside(() -> Launcher.get("127.0.0.1", port, "/metrics"));
                assertThat(h.status()).isEqualTo(200);
                tx = tx(h.body());
            }
            String prom = lab.inside(() -> Launcher.get("127.0.0.1", port, "/metrics")).body();
            assertThat(prom).contains("mqvirtio_frontend_connected{device=\"traffic\"} 1.0")
                    .contains("mqvirtio_device_queue_pairs{device=\"traffic\"} 4.0");
            Map<Integer, Long> later = tx(prom);
            for (int q = 0; q < PAIRS; q++) {
                assertThat(later.get(q)).as("counters only grow").isGreaterThanOrEqualTo(tx.get(q));
            }

            // mqvirtio stats --watch in a third process: rates on every TX queue
            List<String> stats = new ArrayList<>(List.of("ip", "netns", "exec", lab.netns().name()));
            stats.addAll(Launcher.command("stats", "--from", "127.0.0.1:" + port, "--watch", "0.5", "--count", "2"));
            try (Launcher.Run s = Launcher.start(dir, "stats", stats)) {
                assertThat(s.exit(30_000)).as(s.stderr()).isZero();
                String table = s.stdout();
                assertThat(table).contains("traffic: socket " + sock + ", loopback, 4 queue pairs, frontend connected");
                Matcher m = Pattern.compile("(?m)^tx(\\d)\\s+(\\d+)\\s+([0-9.]+)\\s").matcher(
                        table.substring(table.lastIndexOf("pps")));
                int rows = 0;
                while (m.find()) {
                    rows++;
                    assertThat(Long.parseLong(m.group(2))).as("pps of tx%s in%n%s", m.group(1), table).isPositive();
                    assertThat(Double.parseDouble(m.group(3))).as("Mbit/s of tx%s", m.group(1)).isPositive();
                }
                assertThat(rows).as(table).isEqualTo(PAIRS);
            }

            // SIGTERM with the frontend connected and frames in flight
            r.process().destroy();
            assertThat(r.exit(15_000)).as(r.stderr()).isZero();
            assertThat(r.stderr()).contains("SIGTERM: stopping").contains("traffic: stopped (SIGTERM)")
                    .doesNotContain("\tat ");
            assertThat(sock).doesNotExist();
        }
    }

    static Map<Integer, Long> tx(String prometheus) {
        Map<Integer, Long> m = new HashMap<>();
        Matcher s = TX.matcher(prometheus);
        while (s.find()) {
            m.put(Integer.parseInt(s.group(1)), (long) Double.parseDouble(s.group(2)));
        }
        return m;
    }

    static boolean allAbove(Map<Integer, Long> tx, long n) {
        for (int q = 0; q < PAIRS; q++) {
            if (tx.getOrDefault(q, 0L) < n) {
                return false;
            }
        }
        return true;
    }
}
