package io.mqvirtio.bench;

import io.mqvirtio.backend.SinkBackend;
import io.mqvirtio.net.NetDevice;
import io.mqvirtio.net.NetDriver;
import java.nio.file.Files;
import java.nio.file.Path;

/**
 * Scenario 1 of the benchmark on its own: our driver (TX only) into our backend, whose port counts and drops; the
 * backend's workers pinned to {@code cpus} (empty: not pinned). {@code mqvirtio bench} runs it with a CPU list per
 * side.
 */
public final class SinkScenario {
    private SinkScenario() {}

    public record Result(TrafficRun.Result driver, long backendPackets, long[] workerCpuNanos) {}

    public static Result run(int pairs, int frameSize, boolean busyPoll, int[] cpus, double warmup, double seconds)
            throws Exception {
        Path dir = Files.createTempDirectory("mqvirtio-bench");
        Path sock = dir.resolve("sink.sock");
        try (NetDevice dev = new NetDevice(new NetDevice.Config("sink", pairs, 1500, busyPoll, cpus), new SinkBackend(pairs));
             var server = io.mqvirtio.vhostuser.VhostUserServer.listen(sock, dev);
             NetDriver nic = NetDriver.connect(sock, NetDriver.Options.pairs(pairs))) {
            // The backend's count and its workers' CPU time are read at the same instants as the driver's own
            // counters, so both cover the same measured interval (not the warm-up, not the stopping).
            long[][] at = new long[2][];
            long[] b = new long[2];
            TrafficRun.Result r = TrafficRun.run(nic, pairs, TrafficRun.Mode.TX_ONLY, frameSize, warmup, seconds, new int[0],
                    () -> {
                        b[0] = backendTx(dev);
                        at[0] = dev.workerCpuNanos();
                    }, () -> {
                        b[1] = backendTx(dev);
                        at[1] = dev.workerCpuNanos();
                    });
            long[] cpu = new long[pairs];
            for (int i = 0; i < pairs; i++) {
                cpu[i] = at[1][i] - at[0][i];
            }
            return new Result(r, b[1] - b[0], cpu);
        } finally {
            Files.deleteIfExists(sock);
            Files.deleteIfExists(dir);
        }
    }

    private static long backendTx(NetDevice dev) {
        long n = 0;
        var c = dev.counters();
        for (int i = 1; i < c.size(); i += 2) {
            n += c.get(i).packets();
        }
        return n;
    }

    public static void main(String[] args) throws Exception {
        int pairs = args.length > 0 ? Integer.parseInt(args[0]) : 1;
        int size = args.length > 1 ? Integer.parseInt(args[1]) : 64;
        boolean busy = args.length > 2 && Boolean.parseBoolean(args[2]);
        double secs = args.length > 3 ? Double.parseDouble(args[3]) : 5;
        Result r = run(pairs, size, busy, new int[0], 2, secs);
        System.out.printf("pairs=%d size=%d busy=%s driver %.2f Mpps, backend %.2f Mpps, driver CPU %.1f ns/pkt, worker CPU %.1f ns/pkt%n",
                pairs, size, busy, r.driver().txMpps(), r.backendPackets() / r.driver().seconds() / 1e6,
                r.driver().cpuNsPerPacket(), (double) java.util.Arrays.stream(r.workerCpuNanos()).sum() / r.backendPackets());
    }
}
