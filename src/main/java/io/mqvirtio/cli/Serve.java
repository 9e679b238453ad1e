package io.mqvirtio.cli;

import io.mqvirtio.backend.LoopbackBackend;
import io.mqvirtio.backend.TapBackend;
import io.mqvirtio.net.NetDevice;
import io.mqvirtio.net.PacketBackend;
import io.mqvirtio.net.QueueCounters;
import io.mqvirtio.vhostuser.VhostUserServer;
import java.io.PrintStream;
import java.nio.file.Path;
import java.util.List;
import java.util.Set;
import java.util.concurrent.CountDownLatch;

/** {@code mqvirtio serve}: a vhost-user-net backend on one socket, until SIGTERM/SIGINT. */
final class Serve {
    static final Set<String> VALUED = Set.of("socket-path", "queues", "tap", "mtu", "cpus", "stats-interval", "name");
    static final Set<String> FLAGS = Set.of("loopback", "client", "busy-poll", "print-capabilities", "debug");

    private Serve() {}

    static int run(Args a, PrintStream out) throws InterruptedException {
        if (a.flag("print-capabilities")) {
            out.println("{\n  \"type\": \"net\"\n}");
            return 0;
        }
        String socket = a.string("socket-path", null);
        if (socket == null) {
            throw new Args.UsageException("serve needs --socket-path PATH");
        }
        int queues = a.integer("queues", 1, 1, 256);
        int mtu = a.integer("mtu", 1500, 68, 65535);
        String tap = a.string("tap", null);
        boolean loopback = a.flag("loopback");
        if ((tap == null) == !loopback) {
            throw new Args.UsageException("serve needs exactly one backend: --tap NAME or --loopback");
        }
        int[] cpus = a.string("cpus", null) == null ? new int[0]
                : a.integers("cpus", "", 0, 4095).stream().mapToInt(Integer::intValue).toArray();
        double statsEvery = a.decimal("stats-interval", 0, 0, 86400);
        Logging.setup(a.flag("debug"));

        PacketBackend backend = loopback ? new LoopbackBackend(queues, mtu) : TapBackend.open(tap, queues);
        String name = a.string("name", Path.of(socket).getFileName().toString());
        NetDevice device = new NetDevice(new NetDevice.Config(name, queues, mtu, a.flag("busy-poll"), cpus), backend);
        VhostUserServer server;
        try {
            server = a.flag("client") ? VhostUserServer.connect(Path.of(socket), device)
                    : VhostUserServer.listen(Path.of(socket), device);
        } catch (RuntimeException e) {
            device.close();
            throw e;
        }
        CountDownLatch done = new CountDownLatch(1);
        Thread hook = new Thread(() -> {
            server.close();
            device.close();
            done.countDown();
        }, "mqvirtio-shutdown");
        Runtime.getRuntime().addShutdownHook(hook);
        while (!done.await(statsEvery > 0 ? (long) (statsEvery * 1000) : 3_600_000, java.util.concurrent.TimeUnit.MILLISECONDS)) {
            if (statsEvery > 0) {
                printStats(device, out);
            }
        }
        return 0;
    }

    static void printStats(NetDevice device, PrintStream out) {
        List<QueueCounters.Snapshot> c = device.counters();
        StringBuilder b = new StringBuilder(String.format("%-6s %12s %14s %8s %8s %10s %10s%n", "queue", "packets", "bytes",
                "drops", "errors", "kicks", "notifies"));
        for (int i = 0; i < c.size(); i++) {
            QueueCounters.Snapshot s = c.get(i);
            b.append(String.format("%-6s %12d %14d %8d %8d %10d %10d%n", (i % 2 == 0 ? "rx" : "tx") + (i / 2), s.packets(),
                    s.bytes(), s.drops(), s.errors(), s.kicks(), s.notifications()));
        }
        out.print(b);
        out.flush();
    }
}
