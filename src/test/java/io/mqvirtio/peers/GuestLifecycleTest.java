package io.mqvirtio.peers;

import static org.assertj.core.api.Assertions.assertThat;

import com.sun.net.httpserver.HttpServer;
import io.mqvirtio.backend.TapBackend;
import io.mqvirtio.net.NetDevice;
import io.mqvirtio.net.QueueCounters;
import io.mqvirtio.vhostuser.Leaks;
import io.mqvirtio.vhostuser.LogCapture;
import io.mqvirtio.vhostuser.VhostUserServer;
import io.mqvirtio.virtio.VirtioFeatures;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * What a real Linux guest does to its own device, under traffic, on one running backend: in each boot it takes eth0
 * down and up, suspends to RAM (S3: the driver's freeze resets the device, its restore negotiates again), changes
 * its queue count ({@code ethtool -L}) and MTU, turns its offloads off, changes its MAC, goes
 * promiscuous and to MTU 9000 (an 8000-byte ping), unloads and loads virtio_net again (a device reset and a new
 * feature negotiation, once with {@code csum=0 gso=0 napi_tx=0}), then does all of it back to back a few times;
 * the host sends UDP to the guest all along; between boots the host resets the VM (QMP {@code system_reset}, while
 * pings, a download and an upload flow: QEMU stops the rings, the rebooted kernel negotiates again and starts fresh
 * ones), and between the first two a few more times at random moments of the next boots (firmware, kernel, driver
 * probe).
 * After every step traffic resumes within a bound (pings from every vCPU, a download compared by checksum); the
 * backend logs no warning, counts no error, and each TX queue's counters grow from one boot to the next; after each
 * boot the process holds what it held after the first (descriptors, memfd mappings, threads), and once QEMU is gone
 * what it held before the guest came.
 */
@Tag("peer")
class GuestLifecycleTest {
    static final int PAIRS = 2;
    /** Boots that run the whole cycle; between the first two, STORM more resets cut boots short. */
    static final int BOOTS = 3;
    static final int STORM = 4;
    static final int DOWN_KB = 256;
    private static final Pattern STEP = Pattern.compile("MQV-STEP boot=(\\S+) step=(\\S+) n=(\\d+) rc=(\\d+) "
            + "resume_ms=(-?\\d+) combined=(\\d+) mtu=(\\d*) pings=(\\d) bulk=(\\d)");

    @TempDir
    Path dir;

    @ParameterizedTest(name = "device options \"{0}\"")
    @ValueSource(strings = {"", "packed=on"})
    @Timeout(240)
    void guestRebootsReloadsItsDriverAndReconfiguresUnderTraffic(String devOpts) throws Exception {
        Path sock = dir.resolve("vm.sock");
        try (PeerLab lab = PeerLab.open(dir);
             LogCapture log = new LogCapture("io.mqvirtio", java.util.logging.Level.WARNING)) {
            TapBackend backend = lab.tap("mqvlc", PAIRS);
            String host = lab.host();
            String doneAddr = lab.address(3);
            byte[] down = new byte[DOWN_KB * 1024];
            new Random(7).nextBytes(down);
            HttpServer http = lab.inside(() -> HttpServer.create(new InetSocketAddress(host, 5002), 16));
            http.createContext("/down", ex -> {
                ex.sendResponseHeaders(200, down.length);
                try (OutputStream o = ex.getResponseBody()) {
                    o.write(down);
                } catch (java.io.IOException reset) {
                    // the guest rebooted mid-download
                }
            });
            java.util.concurrent.ExecutorService httpThreads = java.util.concurrent.Executors.newFixedThreadPool(4);
            lab.own(httpThreads::shutdownNow);
            http.setExecutor(httpThreads); // downloads cut by a reset do not hold up the next ones
            http.start();
            lab.own(() -> http.stop(0));
            // the host sends to the guest all along (UDP, four flows, so several TAP queues): frames meet rings
            // that stop, reset and start again
            Flood flood = lab.own(lab.inside(() -> new Flood(lab.guestIp())));
            ServerSocket sink = lab.own(lab.inside(() -> new ServerSocket(5001, 16, InetAddress.getByName(host))));
            Thread.ofPlatform().daemon().name("sink").start(() -> {
                while (!sink.isClosed()) {
                    try {
                        Socket c = sink.accept();
                        Thread.ofPlatform().daemon().name("sink").start(() -> {
                            try (c; InputStream in = c.getInputStream()) {
                                in.transferTo(OutputStream.nullOutputStream());
                            } catch (java.io.IOException cut) {
                                // the guest rebooted mid-upload
                            }
                        });
                    } catch (java.io.IOException closed) {
                        return;
                    }
                }
            });
            NetDevice dev = lab.own(new NetDevice(NetDevice.Config.of("lifecycle", PAIRS), backend));
            lab.own(VhostUserServer.listen(sock, dev));
            Leaks beforeGuest = Leaks.now();
            int threadsBeforeGuest = threads();

            Guest g = lab.guest("vm").vhostUser(sock).queues(PAIRS).smp(PAIRS).devOpts(devOpts).qmp()
                    .script("lifecycle.sh").timeout(220).arg("pairs", PAIRS).arg("ip", lab.guestCidr())
                    .arg("peer", host).arg("done", doneAddr).arg("downmd5", QemuGuestTest.md5(down)).arg("cycles", 1)
                    .arg("churn", 3).arg("max", 60).start();
            // a reset reboots the VM rather than ending QEMU (run-guest.sh passes -no-reboot)
            assertThat(g.qmp().execute("{\"execute\":\"set-action\",\"arguments\":{\"reboot\":\"reset\"}}", 10_000))
                    .contains("\"return\"");

            // a guest suspended to RAM is woken within a second if its RTC alarm has not done it
            Qmp qmp = g.qmp();
            Thread waker = Thread.ofPlatform().daemon().name("waker").start(() -> {
                try {
                    while (!Thread.currentThread().isInterrupted()) {
                        Thread.sleep(1000);
                        synchronized (qmp) {
                            if (qmp.execute("{\"execute\":\"query-status\"}", 10_000).contains("\"suspended\"")) {
                                qmp.execute("{\"execute\":\"system_wakeup\"}", 10_000);
                            }
                        }
                    }
                } catch (Exception stopped) {
                    // interrupted, or QEMU gone
                }
            });
            lab.own(waker::interrupt);
            Leaks baseline = null;
            int threads = 0;
            List<QueueCounters.Snapshot> last = null;
            for (int boot = 1; boot <= BOOTS; boot++) {
                awaitCount(g, "MQV-CYCLES-DONE", boot, 120);
                List<QueueCounters.Snapshot> c = dev.counters();
                String context = g.context() + "\ncounters " + c + "\nlog " + log.lines();
                assertThat(log.lines()).as("backend warnings by boot %d%s", boot, context).isEmpty();
                for (int q = 0; q < 2 * PAIRS; q++) {
                    assertThat(c.get(q).errors()).as("queue %d's errors by boot %d%s", q, boot, context).isZero();
                    if (last != null) {
                        assertThat(c.get(q).packets()).as("queue %d's packets by boot %d%s", q, boot, context)
                                .isGreaterThanOrEqualTo(last.get(q).packets());
                    }
                    if (q % 2 == 1) { // a pinger on every vCPU: every TX queue carries traffic in every boot
                        assertThat(c.get(q).packets()).as("TX queue %d's packets grow in boot %d%s", q / 2, boot,
                                context).isGreaterThan(last == null ? 0 : last.get(q).packets());
                    }
                }
                last = c;
                if (baseline == null) {
                    baseline = Leaks.now();
                    threads = threads();
                } else {
                    Leaks now = settle(baseline);
                    assertThat(ownFds(now)).as("descriptors after boot %d%n%s%nbaseline%n%s", boot, now.describe(),
                            baseline.describe()).isEqualTo(ownFds(baseline));
                    assertThat(rings(now)).as("io_uring instances after boot %d%n%s", boot, now.describe())
                            .isLessThanOrEqualTo(PAIRS);
                    assertThat(now.memfdMaps()).as("memfd mappings after boot %d%n%s%nbaseline%n%s", boot,
                            now.describe(), baseline.describe()).isEqualTo(baseline.memfdMaps());
                    assertThat(threads()).as("threads after boot %d", boot).isLessThanOrEqualTo(threads);
                }
                if (boot < BOOTS) {
                    Thread.sleep(1500); // pings and a download flow
                    synchronized (qmp) {
                        assertThat(qmp.execute("{\"execute\":\"system_reset\"}", 10_000)).contains("\"return\"");
                    }
                    if (boot == 1) { // then a few more at random moments of the next boots: firmware, kernel, probe
                        for (int k = 0; k < STORM; k++) {
                            Thread.sleep(ThreadLocalRandom.current().nextInt(300, 3000));
                            synchronized (qmp) {
                                assertThat(qmp.execute("{\"execute\":\"system_reset\"}", 10_000))
                                        .contains("\"return\"");
                            }
                        }
                    }
                }
            }
            lab.ip("addr", "add", doneAddr + "/24", "dev", lab.ifname("mqvlc")); // tells the guest it is over
            assertThat(g.awaitExit(90)).as("guest finished%s", g.context()).isTrue();

            flood.close();
            String console = g.consoleText();
            List<QueueCounters.Snapshot> c = dev.counters();
            StringBuilder summary = new StringBuilder("lifecycle \"" + devOpts + "\": " + flood.sent
                    + " datagrams to the guest; counters " + c + "\n");
            Matcher sm = STEP.matcher(console);
            while (sm.find()) {
                summary.append("  ").append(sm.group()).append('\n');
            }
            console.lines().filter(l -> l.startsWith("MQV-KNOBS")).forEach(l -> summary.append("  ").append(l)
                    .append('\n'));
            System.out.print(summary);
            String context = g.context() + "\ncounters " + c + "\nlog " + log.lines();
            Map<String, List<String>> steps = steps(console);
            // the boots the storm cut short (those with no MQV-CYCLES-DONE) may have done any first steps
            steps.keySet().retainAll(Pattern.compile("MQV-CYCLES-DONE boot=(\\S+)").matcher(console).results()
                    .map(r -> r.group(1)).toList());
            assertThat(steps.keySet()).as("boots%s", context).hasSize(BOOTS);
            int b = 0;
            for (var boot : steps.entrySet()) {
                List<String> want = new ArrayList<>(List.of("boot", "link", "suspend", "queues1", "queues", "knobs",
                        "reload_nocsum", "reload", "churn"));
                if (++b == BOOTS) {
                    want.add("final");
                }
                assertThat(boot.getValue()).as("steps of boot %s%s", boot.getKey(), context).isEqualTo(want);
            }
            Matcher m = STEP.matcher(console);
            while (m.find()) {
                String what = "boot " + m.group(1) + " step " + m.group(2) + ": " + m.group();
                assertThat(m.group(4)).as("%s: its commands%s", what, context).isEqualTo("0");
                long resume = Long.parseLong(m.group(5));
                assertThat(resume).as("%s: traffic resumed (ms)%s", what, context).isBetween(0L, 10_000L);
                assertThat(m.group(8)).as("%s: pings from every vCPU%s", what, context).isEqualTo("1");
                assertThat(m.group(9)).as("%s: the download%s", what, context).isEqualTo("1");
                int combined = Integer.parseInt(m.group(6));
                assertThat(combined).as("%s: queue pairs%s", what, context)
                        .isEqualTo(m.group(2).equals("queues1") ? 1 : PAIRS);
            }
            assertThat(Guest.results(console)).as(context).containsEntry("eth0", "present")
                    .containsEntry("reached_done", "1");
            assertThat(console).as(context).contains("MQV-DONE rc=0").doesNotContain("timed out");
            assertThat(log.lines()).as("backend warnings%s", context).isEmpty();
            for (int q = 0; q < 2 * PAIRS; q++) {
                assertThat(c.get(q).packets()).as("queue %d's packets%s", q, context).isPositive();
                assertThat(c.get(q).errors()).as("queue %d's errors%s", q, context).isZero();
            }
            assertThat(VirtioFeatures.has(dev.lastNegotiatedFeatures(), VirtioFeatures.F_RING_PACKED))
                    .as("packed ring negotiated with \"%s\"", devOpts).isEqualTo(devOpts.contains("packed=on"));

            // QEMU gone: its session's descriptors, mappings and threads with it
            long ended = System.nanoTime() + TimeUnit.SECONDS.toNanos(5);
            while (sessionThreads() > 0 && System.nanoTime() < ended) {
                Thread.sleep(20);
            }
            assertThat(sessionThreads()).as("session threads after QEMU exited").isZero();
            Leaks after = settle(beforeGuest);
            assertThat(after.memfdMaps()).as("memfd mappings after QEMU exited%n%s", after.describe())
                    .isEqualTo(beforeGuest.memfdMaps());
            assertThat(ownFds(after)).as("descriptors after QEMU exited%n%s%nbefore the guest%n%s", after.describe(),
                    beforeGuest.describe()).isEqualTo(ownFds(beforeGuest));
            // a TAP queue's io_uring writer is made at its first attach and stays with the device (TapUringWriter)
            assertThat(rings(after)).as("io_uring instances after QEMU exited%n%s", after.describe())
                    .isLessThanOrEqualTo(PAIRS);
            assertThat(threads()).as("threads after QEMU exited").isLessThanOrEqualTo(threadsBeforeGuest + 6);
        }
    }

    /** UDP datagrams to the guest, about 2000 a second over four source ports, until closed. */
    static final class Flood implements AutoCloseable {
        private final java.net.DatagramSocket[] sockets = new java.net.DatagramSocket[4];
        private final Thread thread;
        private volatile boolean stop;
        volatile long sent;

        Flood(String guest) throws Exception {
            for (int i = 0; i < sockets.length; i++) {
                sockets[i] = new java.net.DatagramSocket();
            }
            java.net.InetSocketAddress to = new java.net.InetSocketAddress(guest, 9);
            byte[] payload = new byte[1000];
            thread = Thread.ofPlatform().daemon().name("flood").start(() -> {
                for (long n = 0; !stop; n++) {
                    try {
                        sockets[(int) (n & 3)].send(new java.net.DatagramPacket(payload, payload.length, to));
                        sent++;
                    } catch (java.io.IOException unreachable) {
                        // no neighbour entry while the guest is down: try again
                    }
                    java.util.concurrent.locks.LockSupport.parkNanos(500_000);
                }
            });
        }

        @Override
        public void close() throws InterruptedException {
            stop = true;
            thread.join(2000);
            for (java.net.DatagramSocket s : sockets) {
                s.close();
            }
        }
    }

    /** Per boot (the guest's boot id), its steps' names in order. */
    private static Map<String, List<String>> steps(String console) {
        Map<String, List<String>> r = new LinkedHashMap<>();
        Matcher m = STEP.matcher(console);
        while (m.find()) {
            r.computeIfAbsent(m.group(1), k -> new ArrayList<>()).add(m.group(2));
        }
        return r;
    }

    private static void awaitCount(Guest g, String marker, int n, int seconds) throws Exception {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds);
        while (g.consoleText().split(Pattern.quote(marker), -1).length - 1 < n) {
            assertThat(g.process().isAlive()).as("guest runs (waiting for %s #%d)%s", marker, n, g.context()).isTrue();
            assertThat(System.nanoTime()).as("%s #%d within %d s%s", marker, n, seconds, g.context())
                    .isLessThan(deadline);
            Thread.sleep(200);
        }
    }

    /**
     * The descriptors a vhost-user session and a device make and must give back (eventfds, epolls, timerfds), for
     * comparing: the test's own sockets (the guest's downloads, QMP) and the directory listing itself left out.
     */
    private static long ownFds(Leaks l) {
        return l.fdTargets().stream().filter(t -> t.contains("anon_inode:") && !t.contains("[io_uring]")).count();
    }

    private static long rings(Leaks l) {
        return l.fdTargets().stream().filter(t -> t.contains("[io_uring]")).count();
    }

    /** The last reading once the session's descriptors and mappings are back to {@code baseline}'s (3 s at most). */
    private static Leaks settle(Leaks baseline) throws InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(3);
        Leaks now = Leaks.now();
        while ((ownFds(now) != ownFds(baseline) || now.memfdMaps() != baseline.memfdMaps())
                && System.nanoTime() < deadline) {
            Thread.sleep(20);
            now = Leaks.now();
        }
        return now;
    }

    private static int threads() {
        return (int) Thread.getAllStackTraces().keySet().stream().filter(Thread::isAlive)
                .filter(t -> !List.of("qmp-reader", "flood", "waker", "sink").contains(t.getName())
                        && !t.getName().startsWith("HTTP-Dispatcher") && !t.getName().startsWith("pool-"))
                .count();
    }

    private static long sessionThreads() {
        return Thread.getAllStackTraces().keySet().stream()
                .filter(t -> t.getName().startsWith("vhost-user ") && t.isAlive()).count();
    }
}
