package io.mqvirtio.cli;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import org.junit.jupiter.api.Test;

/** serve's options at their limits, parsed in this process (nothing is started). */
class ServeOptionsTest {
    private static Serve.Options parse(String... args) {
        PrintStream sink = new PrintStream(new ByteArrayOutputStream());
        picocli.CommandLine.ParseResult r = Main.commandLine(sink, sink).parseArgs(args);
        return Serve.Options.parse((Serve.Command) r.subcommand().commandSpec().userObject());
    }

    /**
     * A stats interval so short that it rounds to 0 ms made the main thread print totals in a loop without a pause
     * (await(0) returns at once): a spin. It is refused, as {@code stats --watch} refuses one under 0.1 s.
     */
    @Test
    void aStatsIntervalIsOffOrAtLeastATenthOfASecond() {
        for (String s : new String[] {"0.0001", "0.0009", "0.05"}) {
            assertThatThrownBy(() -> parse("serve", "--socket-path", "/tmp/x.sock", "--loopback", "--stats-interval", s))
                    .as("--stats-interval %s", s).isInstanceOf(UsageException.class)
                    .hasMessageContaining("--stats-interval must be 0 (off) or in 0.1..86400");
        }
        assertThat(parse("serve", "--socket-path", "/tmp/x.sock", "--loopback", "--stats-interval", "0").statsEvery())
                .isZero();
        assertThat(parse("serve", "--socket-path", "/tmp/x.sock", "--loopback", "--stats-interval", "0.1").statsEvery())
                .isEqualTo(0.1);
    }

    /**
     * A socket path longer than sun_path: serve listened on it (bound under a short private name, then linked there)
     * and said so, but no frontend can connect by it, and {@code --client} retried it in silence for good. Refused
     * up front, both ways and inside a --vm; 107 bytes is still a path.
     */
    @Test
    void aSocketPathNoFrontendCouldConnectByIsRefused() {
        String longest = "/tmp/" + "p".repeat(Serve.MAX_SOCKET_PATH - 5);
        assertThat(parse("serve", "--socket-path", longest, "--loopback").vms().getFirst().socket().toString())
                .isEqualTo(longest);
        String tooLong = longest + "x";
        for (String[] argv : java.util.List.of(new String[] {"serve", "--socket-path", tooLong, "--loopback"},
                new String[] {"serve", "--socket-path", tooLong, "--loopback", "--client"},
                new String[] {"serve", "--vm", "socket-path=" + tooLong + ",loopback"})) {
            assertThatThrownBy(() -> parse(argv)).as(String.join(" ", argv)).isInstanceOf(UsageException.class)
                    .hasMessageContaining("is 108 bytes").hasMessageContaining("at most 107");
        }
    }

    /**
     * A device name goes into the capture files' names (DIR/NAME-qpN.pcapng): one with a '/' or "..", from --name or
     * a --vm's name=, wrote them outside the capture directory; control characters reached logs and terminals.
     */
    @Test
    void aDeviceNameThatNamesADirectoryOrHidesInATerminalIsRefused() {
        assertThat(parse("serve", "--socket-path", "/tmp/x.sock", "--loopback", "--name", "vm-1.a@b").vms().getFirst()
                .name()).isEqualTo("vm-1.a@b");
        assertThat(parse("serve", "--socket-path", "/tmp/vm7.sock", "--loopback").vms().getFirst().name())
                .isEqualTo("vm7.sock");
        for (String[] argv : java.util.List.of(new String[] {"serve", "--socket-path", "/tmp/x.sock", "--loopback",
                        "--name", "../../etc/cron.d/x"},
                new String[] {"serve", "--socket-path", "/tmp/x.sock", "--loopback", "--name", ".."},
                new String[] {"serve", "--vm", "socket-path=/tmp/x.sock,loopback,name=a/b"},
                new String[] {"serve", "--socket-path", "/tmp/x.sock", "--loopback", "--name", "vm\u001b[2J"},
                new String[] {"serve", "--socket-path", "/tmp/x.sock", "--loopback", "--name", ""})) {
            assertThatThrownBy(() -> parse(argv)).as(String.join(" ", argv)).isInstanceOf(UsageException.class)
                    .hasMessageContaining("the device name");
        }
    }

    /**
     * Each VM's socket may have a group of its own (its QEMU's user's), so that another VM's QEMU, in another group,
     * cannot connect to it and take the VM's traffic while it is free (before, one --socket-group was every VM's);
     * --socket-group beside the --vm specs is the default, and a blank one is refused.
     */
    @Test
    void eachVmsSocketMayHaveAGroupOfItsOwn() {
        Serve.Options o = parse("serve", "--vm", "socket-path=/tmp/a.sock,loopback,socket-group=qemu-a",
                "--vm", "socket-path=/tmp/b.sock,loopback", "--socket-group", "kvm");
        assertThat(o.vms()).extracting(Serve.Vm::socketGroup).containsExactly("qemu-a", "kvm");
        assertThat(parse("serve", "--socket-path", "/tmp/x.sock", "--loopback").vms().getFirst().socketGroup()).isNull();
        assertThat(parse("serve", "--socket-path", "/tmp/x.sock", "--loopback", "--socket-group", "kvm").vms().getFirst()
                .socketGroup()).isEqualTo("kvm");
        assertThatThrownBy(() -> parse("serve", "--vm", "socket-path=/tmp/a.sock,loopback,socket-group= "))
                .isInstanceOf(UsageException.class).hasMessageContaining("--socket-group needs a group name");
    }

    /**
     * Two VMs may each ask for a TAP by the kernel's pattern (tap=mqv%d): the kernel gives each a name free at the time,
     * so each its own device (a device another VM holds is refused at start, by the name the kernel gave). Before, the
     * two patterns were taken for one device given to two VMs. One name given to two VMs is still refused.
     */
    @Test
    void twoVmsMayEachAskForATapByThePattern() {
        Serve.Options o = parse("serve", "--vm", "socket-path=/tmp/a.sock,tap=mqv%d,name=a", "--vm",
                "socket-path=/tmp/b.sock,tap=mqv%d,name=b");
        assertThat(o.vms()).extracting(Serve.Vm::tap).containsExactly("mqv%d", "mqv%d");
        assertThatThrownBy(() -> parse("serve", "--vm", "socket-path=/tmp/a.sock,tap=mqv7,name=a", "--vm",
                "socket-path=/tmp/b.sock,tap=mqv7,name=b")).isInstanceOf(UsageException.class)
                .hasMessageContaining("TAP device mqv7 is given to two VMs");
    }

    /**
     * A total for all VMs below one VM's own limit, both given: that VM would be refused at run time whatever its
     * limit said, so it is a usage error now (before: accepted). The total alone caps every VM's default limit.
     */
    @Test
    void aTotalBelowAVmsOwnLimitIsRefused() {
        assertThatThrownBy(() -> parse("serve", "--socket-path", "/tmp/x.sock", "--loopback", "--max-memory", "4G",
                "--max-total-memory", "1G")).isInstanceOf(UsageException.class)
                .hasMessageContaining("--max-total-memory 1G is below the max-memory of VM");
        assertThatThrownBy(() -> parse("serve", "--vm", "socket-path=/tmp/a.sock,loopback,name=a,max-memory=2G",
                "--vm", "socket-path=/tmp/b.sock,loopback,name=b", "--max-total-memory", "1G"))
                .isInstanceOf(UsageException.class).hasMessageContaining("VM a");
        assertThat(parse("serve", "--socket-path", "/tmp/x.sock", "--loopback", "--max-total-memory", "1G")
                .maxTotalMemory()).isEqualTo(1L << 30);
        assertThat(parse("serve", "--socket-path", "/tmp/x.sock", "--loopback", "--max-memory", "1G",
                "--max-total-memory", "1G").maxTotalMemory()).isEqualTo(1L << 30);
    }
}
