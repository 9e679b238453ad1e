package io.mqvirtio.bench;

import io.mqvirtio.backend.LoopbackBackend;
import io.mqvirtio.net.NetDevice;
import io.mqvirtio.net.NetDriver;
import io.mqvirtio.net.QueueCounters;
import io.mqvirtio.vhostuser.VhostUserServer;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;

/**
 * {@code mqvirtio demo}: our backend (loopback) and our driver in one process, talking vhost-user over a real UNIX
 * socket and shared memory; one traffic thread per queue pair; a per-queue table at the end.
 */
public final class DriverDemo {
    private DriverDemo() {}

    public static void run(int pairs, int frameSize, double seconds, PrintStream out) throws Exception {
        Path dir = Files.createTempDirectory("mqvirtio-demo");
        Path sock = dir.resolve("demo.sock");
        try (NetDevice dev = new NetDevice(NetDevice.Config.of("demo", pairs), new LoopbackBackend(pairs, 1500));
             VhostUserServer server = VhostUserServer.listen(sock, dev);
             NetDriver nic = NetDriver.connect(sock, NetDriver.Options.pairs(pairs))) {
            out.printf("mqvirtio demo: driver -> vhost-user (%s) -> backend (loopback) -> driver, %d queue pair%s, %d B frames, %.1f s%n",
                    sock, pairs, pairs == 1 ? "" : "s", frameSize, seconds);
            out.println("negotiated features: " + io.mqvirtio.virtio.VirtioFeatures.list(nic.features()));
            TrafficRun.Result r = TrafficRun.run(nic, pairs, TrafficRun.Mode.ECHO, frameSize, Math.min(1, seconds / 3), seconds);
            out.printf("%-5s %10s %10s %10s %10s %12s %12s%n", "pair", "TX Mpps", "RX Mpps", "TX Gbit/s", "RX Gbit/s",
                    "backend TX", "backend RX");
            List<QueueCounters.Snapshot> c = dev.counters();
            for (TrafficRun.PairResult p : r.pairs()) {
                out.printf("%-5d %10.3f %10.3f %10.3f %10.3f %12d %12d%n", p.pair(), p.txPackets() / r.seconds() / 1e6,
                        p.rxPackets() / r.seconds() / 1e6, p.txBytes() * 8 / r.seconds() / 1e9, p.rxBytes() * 8 / r.seconds() / 1e9,
                        c.get(2 * p.pair() + 1).packets(), c.get(2 * p.pair()).packets());
            }
            out.printf("%-5s %10.3f %10.3f%n", "all", r.txMpps(), r.rxMpps());
        } finally {
            Files.deleteIfExists(sock);
            Files.deleteIfExists(dir);
        }
    }
}
