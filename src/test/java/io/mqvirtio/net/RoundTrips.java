package io.mqvirtio.net;

import io.mqvirtio.backend.LoopbackBackend;
import io.mqvirtio.bench.Testpmd;
import io.mqvirtio.peers.PeerLab;
import io.mqvirtio.peers.Peers;
import io.mqvirtio.vhostuser.VhostUserServer;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;

/**
 * Round trips with a small window (send {@code window} frames on pair 0, wait with awaitReceive until all are back,
 * again) from our driver (64 B frames) to an echo, a measurement for issue 12 (docs/performance.md, "Round trips"):
 * <ul>
 * <li>{@code loop [window] [seconds]}: our loopback device, each ring layout with EVENT_IDX on and off;</li>
 * <li>{@code testpmd [window] [seconds]}: testpmd's vhost PMD in io mode, the same layouts;</li>
 * <li>{@code packed_vq=P,in_order=I [window] [seconds]}: our driver (split, IN_ORDER) into testpmd's vhost port,
 * io-forwarded to its virtio-user port with those options, which our loopback device echoes: DPDK's driver against
 * our device;</li>
 * <li>{@code ab EXPERIMENT split|packed evidx|noevidx inorder|anyorder SECONDS}: paired windows of 0.5 s with an
 * {@link io.mqvirtio.virtio.Experiment} off and on, round trips of 4 over our loopback device.</li>
 * </ul>
 * Prints round trips per second, the median, 99th percentile and worst round trip, how many took over 10 ms, kicks
 * and waits per round trip, the CPU per round trip of this thread and of the device's worker, and the kicks and calls
 * the device counted per round trip. Run it from the test classpath, e.g. {@code java --enable-native-access=ALL-UNNAMED
 * -cp target/test-classes:target/classes:$(cat cp.txt) io.mqvirtio.net.RoundTrips loop 4 2}, with cp.txt from
 * {@code ./mvnw -o dependency:build-classpath -Dmdep.outputFile=cp.txt -Dmdep.includeScope=test}.
 */
public final class RoundTrips {
    public static void main(String[] args) throws Exception {
        if (args.length > 0 && args[0].equals("ab")) {
            ab(args);
            return;
        }
        String peer = args.length > 0 ? args[0] : "loop";
        int window = args.length > 1 ? Integer.parseInt(args[1]) : 4;
        double seconds = args.length > 2 ? Double.parseDouble(args[2]) : 2;
        long evIdx = VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX);
        long packed = VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED);
        long inOrder = VirtioFeatures.bit(VirtioFeatures.F_IN_ORDER);
        String[] names = {"split", "split+inorder", "packed", "packed+inorder"};
        long[] layouts = {NetDriver.WANTED & ~packed & ~inOrder, NetDriver.WANTED & ~packed, NetDriver.WANTED & ~inOrder,
                NetDriver.WANTED};
        boolean ours = peer.equals("loop") || peer.equals("testpmd");
        for (int l = ours ? 0 : 1; l < (ours ? layouts.length : 2); l++) {
            for (boolean ev : ours ? new boolean[] {true, false} : new boolean[] {true}) {
                long f = ev ? layouts[l] : layouts[l] & ~evIdx;
                Path dir = Files.createTempDirectory("rt");
                String r = switch (peer) {
                    case "loop" -> overLoopback(dir, f, window, seconds);
                    case "testpmd" -> overTestpmd(dir, f, window, seconds);
                    default -> throughVirtioUser(dir, f, window, seconds, peer);
                };
                System.out.printf("%-8s %-15s %-9s window %d: %s%n", peer, names[l], ev ? "event_idx" : "no_evidx", window, r);
            }
        }
    }

    static String overLoopback(Path dir, long features, int window, double seconds) throws Exception {
        try (NetDevice device = new NetDevice(new NetDevice.Config("loop", 1, 1500, false, new int[0], 0),
                new LoopbackBackend(1, 1500)); VhostUserServer server = VhostUserServer.listen(dir.resolve("l.sock"), device)) {
            return run(server.path(), features, window, seconds, device);
        }
    }

    static String overTestpmd(Path dir, long features, int window, double seconds) throws Exception {
        Path sock = dir.resolve("vhost.sock");
        try (PeerLab lab = PeerLab.open(dir)) {
            Testpmd t = lab.testpmd("testpmd", "net_vhost0,iface=" + sock + ",queues=1", 1, "io", 0,
                    "--port-topology=loop", "--no-flush-rx");
            t.command("start");
            return run(sock, features, window, seconds, null);
        }
    }

    /**
     * Our driver -> testpmd's vhost port 0 -> io forwarding -> its virtio-user port 1 (ring options {@code opts}, e.g.
     * {@code packed_vq=1,in_order=1}) -> our device (loopback) -> back the same way.
     */
    static String throughVirtioUser(Path dir, long features, int window, double seconds, String opts) throws Exception {
        Path vhost = dir.resolve("vhost.sock");
        try (NetDevice device = new NetDevice(new NetDevice.Config("loop", 1, 1500, false, new int[0], 0),
                new LoopbackBackend(1, 1500)); VhostUserServer server = VhostUserServer.listen(dir.resolve("l.sock"), device)) {
            java.util.List<String> cmd = java.util.List.of("/usr/bin/setpriv", "--pdeathsig", "KILL",
                    Peers.require("dpdk-testpmd", "testpmd").toString(), "--lcores", "0@(0-1),1@(0-1)", "--main-lcore", "0",
                    "--no-huge", "-m", "512", "--no-pci", "--no-telemetry", "--file-prefix", "rt" + ProcessHandle.current().pid(),
                    "--vdev", "net_vhost0,iface=" + vhost + ",queues=1",
                    "--vdev", "net_virtio_user1,path=" + server.path() + ",queues=1," + opts,
                    "--", "-i", "--nb-cores=1", "--total-num-mbufs=32768", "--forward-mode=io", "--no-flush-rx");
            Process p = new ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(dir.resolve("testpmd.log").toFile())
                    .start();
            try {
                Peers.waitForLine(dir.resolve("testpmd.log"), "testpmd>", 60);
                p.getOutputStream().write("start\n".getBytes());
                p.getOutputStream().flush();
                return run(vhost, features, window, seconds, device);
            } finally {
                p.destroyForcibly();
                p.waitFor();
            }
        }
    }

    /**
     * Paired windows (docs/performance.md) of round trips with window 4 over the loopback device: {@code ab
     * EXPERIMENT split|packed evidx|noevidx inorder|anyorder SECONDS}.
     */
    static void ab(String[] args) throws Exception {
        io.mqvirtio.virtio.Experiment e = io.mqvirtio.virtio.Experiment.named(args[1]);
        long f = NetDriver.WANTED;
        if (args[2].equals("split")) {
            f &= ~VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED);
        }
        if (args[3].equals("noevidx")) {
            f &= ~VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX);
        }
        if (args[4].equals("anyorder")) {
            f &= ~VirtioFeatures.bit(VirtioFeatures.F_IN_ORDER);
        }
        double seconds = Double.parseDouble(args[5]);
        Path dir = Files.createTempDirectory("rt");
        try (NetDevice device = new NetDevice(new NetDevice.Config("loop", 1, 1500, false, new int[0], 0),
                new LoopbackBackend(1, 1500)); VhostUserServer server = VhostUserServer.listen(dir.resolve("l.sock"), device);
             NetDriver nic = NetDriver.connect(server.path(), NetDriver.Options.pairs(1).withFeatures(f));
             Arena a = Arena.ofConfined()) {
            NetQueuePair q = nic.pair(0);
            int window = 4;
            Window wb = Window.of(a, window);
            MemorySegment[] frames = wb.frames();
            MemorySegment[] bufs = wb.bufs();
            int[] lens = wb.lens();
            var mx = java.lang.management.ManagementFactory.getThreadMXBean();
            int windows = (int) (seconds / 0.5);
            double[][] w = new double[windows][4]; // on?, rt/s, worker ns/rt, driver ns/rt
            for (int k = -2; k < windows; k++) {
                boolean on = k < 0 ? k == -1 : ((k + 1) / 2) % 2 == 1; // off on on off off on on ...
                e.set(on);
                long rx0 = q.rxCounters().kicks();
                long c0 = mx.getCurrentThreadCpuTime();
                long w0 = device.workerCpuNanos()[0];
                long t0 = System.nanoTime();
                long end = t0 + 500_000_000L;
                long n = 0;
                while (System.nanoTime() < end) {
                    int sent = 0;
                    while (sent < window) {
                        sent += q.send(frames, sent, window - sent);
                    }
                    int got = 0;
                    while (got < window) {
                        int r = q.receive(bufs, lens, bufs.length);
                        got += r;
                        if (r == 0 && !q.awaitReceive(1000)) {
                            throw new IllegalStateException("lost");
                        }
                    }
                    n++;
                }
                double el = (System.nanoTime() - t0) / 1e9;
                if (k >= 0) {
                    w[k] = new double[] {on ? 1 : 0, n / el, (device.workerCpuNanos()[0] - w0) / (double) n,
                            (mx.getCurrentThreadCpuTime() - c0) / (double) n, (q.rxCounters().kicks() - rx0) / (double) n};
                }
            }
            e.reset();
            io.mqvirtio.bench.PairedWindows pw = new io.mqvirtio.bench.PairedWindows();
            double kon = 0, koff = 0;
            java.util.List<Double> drv = new java.util.ArrayList<>();
            for (int k = 0; k + 1 < windows; k++) {
                double[] x = w[k], y = w[k + 1];
                if (x[0] == y[0]) {
                    continue;
                }
                double[] off = x[0] == 0 ? x : y, on = x[0] == 0 ? y : x;
                pw.add(off[1] / 1e6, on[1] / 1e6, off[2], on[2]);
                drv.add(on[3] / off[3]);
                kon += on[4];
                koff += off[4];
            }
            double[] d = drv.stream().mapToDouble(Double::doubleValue).sorted().toArray();
            System.out.printf("%s %s %s %s: M round trips/s and the worker's CPU per round trip: %s%n", e, args[2],
                    args[3], args[4], pw);
            System.out.printf("   the driver thread's CPU per round trip on/off %.3f (quartiles %.3f-%.3f); driver RX "
                    + "kicks per round trip on %.2f, off %.2f%n", d[d.length / 2], d[d.length / 4], d[3 * d.length / 4],
                    kon / pw.size(), koff / pw.size());
        }
    }

    static long[] deviceCounts(NetDevice d) {
        if (d == null) {
            return new long[4];
        }
        var c = d.counters();
        return new long[] {c.get(0).kicks(), c.get(1).kicks(), c.get(0).notifications(), c.get(1).notifications()};
    }

    /** A window's 64-byte frames, and 64 receive buffers of 2 KiB with their lengths. */
    record Window(MemorySegment[] frames, MemorySegment[] bufs, int[] lens) {
        static Window of(Arena a, int window) {
            MemorySegment[] frames = new MemorySegment[window];
            for (int i = 0; i < window; i++) {
                frames[i] = NetDriverContract.frame(a, 0, i, 64);
            }
            MemorySegment[] bufs = new MemorySegment[64];
            for (int i = 0; i < bufs.length; i++) {
                bufs[i] = a.allocate(2048);
            }
            return new Window(frames, bufs, new int[bufs.length]);
        }
    }

    static String run(Path sock, long features, int window, double seconds, NetDevice device) throws Exception {
        try (NetDriver nic = NetDriver.connect(sock, NetDriver.Options.pairs(1).withFeatures(features));
                Arena a = Arena.ofConfined()) {
            NetQueuePair q = nic.pair(0);
            Window wb = Window.of(a, window);
            MemorySegment[] frames = wb.frames();
            MemorySegment[] bufs = wb.bufs();
            int[] lens = wb.lens();
            // warm up and let a slow starter (testpmd's TX queue) come up
            long end0 = System.nanoTime() + 2_000_000_000L;
            while (System.nanoTime() < end0) {
                q.send(frames, 0, 1);
                q.awaitReceive(20);
                q.receive(bufs, lens, bufs.length);
            }
            while (q.awaitReceive(100)) {
                q.receive(bufs, lens, bufs.length);
            }
            long kicks0 = q.txCounters().kicks() + q.rxCounters().kicks();
            long[] dev0 = deviceCounts(device);
            var mx = java.lang.management.ManagementFactory.getThreadMXBean();
            long me0 = mx.getCurrentThreadCpuTime();
            long w0 = device == null ? 0 : device.workerCpuNanos()[0];
            long[] rt = new long[4_000_000];
            int n = 0;
            long waits = 0;
            long lost = 0;
            long start = System.nanoTime();
            long end = start + (long) (seconds * 1e9);
            while (System.nanoTime() < end && n < rt.length) {
                long t0 = System.nanoTime();
                int sent = 0;
                while (sent < window) {
                    sent += q.send(frames, sent, window - sent);
                }
                int got = 0;
                while (got < window) {
                    int r = q.receive(bufs, lens, bufs.length);
                    got += r;
                    if (r == 0) {
                        waits++;
                        if (!q.awaitReceive(1000)) {
                            lost += window - got;
                            break;
                        }
                    }
                }
                rt[n++] = System.nanoTime() - t0;
            }
            double el = (System.nanoTime() - start) / 1e9;
            long[] dev1 = deviceCounts(device);
            long meCpu = mx.getCurrentThreadCpuTime() - me0;
            long wCpu = device == null ? 0 : device.workerCpuNanos()[0] - w0;
            String devs = String.format("  cpu/rt: driver %.1f us worker %.1f us", meCpu / 1e3 / n, wCpu / 1e3 / n)
                    + String.format("  device per rt: rx kicks %.2f tx kicks %.2f rx calls %.2f tx calls %.2f",
                    (dev1[0] - dev0[0]) / (double) n, (dev1[1] - dev0[1]) / (double) n, (dev1[2] - dev0[2]) / (double) n,
                    (dev1[3] - dev0[3]) / (double) n);
            long kicks = q.txCounters().kicks() + q.rxCounters().kicks() - kicks0;
            long[] s = Arrays.copyOf(rt, n);
            Arrays.sort(s);
            long slow = Arrays.stream(s).filter(x -> x > 10_000_000L).count();
            return String.format("%8.0f rt/s  median %6.1f us  p99 %8.1f us  max %8.1f us  >10ms %d  kicks/rt %.2f"
                    + "  waits/rt %.2f  lost %d", n / el, s[n / 2] / 1e3, s[(int) (n * 0.99)] / 1e3, s[n - 1] / 1e3, slow,
                    (double) kicks / n, (double) waits / n, lost) + (device == null ? String.format("  cpu/rt: driver %.1f us", meCpu / 1e3 / n) : devs);
        }
    }
}
