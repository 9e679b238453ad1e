package io.mqvirtio.cli;

import static org.assertj.core.api.Assertions.assertThat;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.List;
import org.junit.jupiter.api.Test;

class MainTest {
    record Out(int rc, String out, String err) {}

    static Out run(String... argv) {
        ByteArrayOutputStream o = new ByteArrayOutputStream();
        ByteArrayOutputStream e = new ByteArrayOutputStream();
        int rc = Main.run(argv, new PrintStream(o, true, StandardCharsets.UTF_8), new PrintStream(e, true, StandardCharsets.UTF_8));
        return new Out(rc, o.toString(StandardCharsets.UTF_8), e.toString(StandardCharsets.UTF_8));
    }

    @Test
    void helpAndUnknownCommands() {
        Out help = run("help");
        assertThat(help.rc()).isZero();
        assertThat(help.out()).contains("Usage: mqvirtio").contains("serve").contains("bench").contains("stats");
        Out none = run();
        assertThat(none.rc()).as("nothing asked").isEqualTo(2);
        assertThat(none.err()).contains("Usage: mqvirtio");
        Out bad = run("frobnicate");
        assertThat(bad.rc()).isEqualTo(2);
        assertThat(bad.err()).startsWith("mqvirtio: unknown command 'frobnicate'\n")
                .contains("run 'mqvirtio help' for usage");
    }

    /** Every command and subcommand answers --help (its own options, status 0) and --version. */
    @Test
    void everyCommandAnswersHelpAndVersion() {
        String version = run("--version").out();
        assertThat(version).matches("(?s)mqvirtio \\d+\\.\\d+\\.\\d+\\S*\nJava 25.*");
        record Cmd(List<String> words, String option) {}
        List<Cmd> cmds = List.of(new Cmd(List.of("serve"), "--socket-path=P"), new Cmd(List.of("bench"), "--scenarios=LIST"),
                new Cmd(List.of("bench", "ring"), "--ring=N"), new Cmd(List.of("stats"), "--from=ADDR:PORT"),
                new Cmd(List.of("demo"), "--pairs=N"));
        for (Cmd c : cmds) {
            List<String> argv = new java.util.ArrayList<>(c.words());
            argv.add("--help");
            Out h = run(argv.toArray(new String[0]));
            assertThat(h.rc()).as(String.join(" ", argv)).isZero();
            assertThat(h.out()).startsWith("Usage: mqvirtio " + String.join(" ", c.words())).contains(c.option());
            assertThat(h.out().lines()).allSatisfy(l -> assertThat(l.length()).isLessThanOrEqualTo(Main.WIDTH));
            argv.set(argv.size() - 1, "--version");
            assertThat(run(argv.toArray(new String[0])).out()).isEqualTo(version);
        }
        assertThat(run("help", "serve").out()).isEqualTo(run("serve", "--help").out());
        assertThat(run("serve", "--help").out()).contains("--vm=SPEC").contains("--print-capabilities");
    }

    /** The generated completion script loads into bash and completes commands and a command's options. */
    @Test
    void completionScriptCompletesCommandsAndOptions() throws Exception {
        Out script = run("generate-completion");
        assertThat(script.rc()).isZero();
        java.nio.file.Path f = java.nio.file.Files.createTempFile("mqvirtio-completion", ".bash");
        try {
            java.nio.file.Files.writeString(f, script.out());
            String complete = "source " + f + "; complete() { :; }; "
                    + "COMP_WORDS=(mqvirtio se); COMP_CWORD=1; _complete_mqvirtio; echo \"commands: ${COMPREPLY[*]}\"; "
                    + "COMP_WORDS=(mqvirtio serve --que); COMP_CWORD=2; _complete_mqvirtio; echo \"options: ${COMPREPLY[*]}\"";
            Process p = new ProcessBuilder("bash", "-c", complete).redirectErrorStream(true).start();
            String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
            assertThat(p.waitFor(30, java.util.concurrent.TimeUnit.SECONDS)).isTrue();
            assertThat(out).contains("commands: serve").contains("options: --queues");
        } finally {
            java.nio.file.Files.deleteIfExists(f);
        }
    }

    @Test
    void malformedOptionsAreClearErrors() {
        assertThat(run("bench", "ring", "--ring", "100").err()).contains("--ring must be a power of two");
        assertThat(run("bench", "ring", "--sizes", "64,abc").err())
                .contains("Invalid value for option '--sizes' (LIST): 'abc' is not an int");
        assertThat(run("bench", "ring", "--seconds").err()).contains("Missing required parameter for option '--seconds' (S)")
                .contains("run 'mqvirtio bench ring --help' for usage");
        assertThat(run("demo", "--bogus", "1").err()).contains("unknown option --bogus");
        assertThat(run("bench", "ring", "--sizes", "70000").rc()).isEqualTo(2);
    }

    @Test
    void demoMovesFramesThroughDriverAndBackend() {
        Out o = run("demo", "--pairs", "2", "--seconds", "0.5");
        assertThat(o.rc()).as(o.err()).isZero();
        assertThat(o.out()).contains("negotiated features:");
        // one row per pair, frames sent and echoed back on each (however loaded the machine)
        for (int pair = 0; pair < 2; pair++) {
            java.util.regex.Matcher m = java.util.regex.Pattern
                    .compile("\\n" + pair + "\\s+([0-9.]+)\\s+([0-9.]+)\\s+[0-9.]+\\s+[0-9.]+\\s+(\\d+)\\s+(\\d+)")
                    .matcher(o.out());
            assertThat(m.find()).as("row for pair %d in%n%s", pair, o.out()).isTrue();
            assertThat(Long.parseLong(m.group(3))).as("backend TX packets on pair %d", pair).isPositive();
            assertThat(Long.parseLong(m.group(4))).as("backend RX packets on pair %d", pair).isPositive();
        }
    }

    @Test
    void ringBenchmarkRuns() {
        Out o = run("bench", "ring", "--sizes", "64", "--seconds", "0.2", "--warmup", "0.1");
        assertThat(o.rc()).isZero();
        // one row per ring layout the bench runs by default (split and packed, IN_ORDER on)
        assertThat(o.out()).containsPattern("\\n\\s+64\\s+256\\s+split\\+inorder\\s+[0-9.]+");
        assertThat(o.out()).containsPattern("\\n\\s+64\\s+256\\s+packed\\+inorder\\s+[0-9.]+");
    }
}
