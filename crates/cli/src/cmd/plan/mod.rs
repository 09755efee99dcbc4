//! `seqfeed plan`: build a training plan from a config and a dataset (or
//! source shapes) and query it: `show` prints steps' per-rank blocks,
//! `materialize` writes the explicit table of a step range, `stats` prints
//! quotas, realized ratios and repetition counts, `pin` writes the config
//! with each source's fingerprint recorded.
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Subcommand, ValueEnum};
mod stats;

use seqfeed_plan::{
    shapes_from_dataset, Plan, PlanConfig, SequenceRef, ShapesFile, SourceShape, Split,
};

/// Flags of `seqfeed plan`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: PlanCommand,
}

#[derive(Subcommand, Debug)]
enum PlanCommand {
    /// Print the per-rank blocks of one or more steps.
    Show(ShowArgs),
    /// Write the explicit table of a step range to a file (TSV or binary).
    Materialize(MaterializeArgs),
    /// Print quotas, realized ratios, repetition counts and the first and last steps.
    Stats(StatsArgs),
    /// Write the config with every source's current fingerprint pinned.
    Pin(PinArgs),
    /// Write the dataset's shapes file (every source's files, counts,
    /// seq_len, dtype, fingerprints, tokenizer and special-token ids): what
    /// a trainer host needs to open the plan without the data or the nodes.
    Shapes(ShapesArgs),
}

/// Flags of `seqfeed plan shapes`.
#[derive(clap::Args, Debug)]
struct ShapesArgs {
    /// Dataset root. Only the sources' manifest.json files are read, so a
    /// storage host holding only its placed files will do.
    #[arg(long)]
    dataset: PathBuf,
    /// Shapes file to write (TOML; written to a temporary name, then renamed).
    #[arg(long, short)]
    out: PathBuf,
}

/// Where the plan comes from: a config plus a dataset or a shapes file.
#[derive(clap::Args, Debug)]
struct Input {
    /// Plan config (TOML).
    #[arg(long, short)]
    config: PathBuf,
    /// Dataset root (one subdirectory per packed source).
    #[arg(long, required_unless_present = "shapes", conflicts_with = "shapes")]
    dataset: Option<PathBuf>,
    /// Source shapes (TOML `[[sources]]` with `[[sources.files]]`) instead of a dataset.
    #[arg(long)]
    shapes: Option<PathBuf>,
}

impl Input {
    fn shapes(&self) -> anyhow::Result<Vec<SourceShape>> {
        if let Some(root) = &self.dataset {
            let ds = seqfeed_format::Dataset::open(root)
                .with_context(|| format!("opening dataset {}", root.display()))?;
            Ok(shapes_from_dataset(&ds)?)
        } else if let Some(path) = &self.shapes {
            Ok(ShapesFile::from_file(path)?.sources)
        } else {
            bail!("give --dataset or --shapes")
        }
    }

    fn plan(&self) -> anyhow::Result<Plan> {
        let config = PlanConfig::from_file(&self.config)?;
        let t = Instant::now();
        let plan = Plan::new(config, self.shapes()?)?;
        tracing::info!(
            fingerprint = plan.fingerprint(),
            steps = plan.steps(),
            elapsed_us = t.elapsed().as_micros() as u64,
            "plan opened"
        );
        Ok(plan)
    }
}

/// Which stream of the plan (`--split`).
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
enum SplitArg {
    /// The training run.
    #[default]
    Train,
    /// The held-out sequences (`[split]` in the config), in batches of the global batch.
    Validation,
}

impl From<SplitArg> for Split {
    fn from(s: SplitArg) -> Split {
        match s {
            SplitArg::Train => Split::Train,
            SplitArg::Validation => Split::Validation,
        }
    }
}

#[derive(clap::Args, Debug)]
struct ShowArgs {
    #[command(flatten)]
    input: Input,
    /// First step to show.
    #[arg(long, default_value_t = 0)]
    step: u64,
    /// Number of steps to show.
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// World size (ranks sharing each global batch).
    #[arg(long, default_value_t = 1)]
    world: u32,
    /// Show only this rank's block (default: every rank).
    #[arg(long)]
    rank: Option<u32>,
    /// The stream: the training run or the held-out validation sequences.
    #[arg(long, value_enum, default_value_t = SplitArg::Train)]
    split: SplitArg,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    /// Tab-separated text with a header line.
    Tsv,
    /// Little-endian 40-byte records: position u64, source u32, file u32,
    /// index u64, offset u64, len u32, rank u32.
    Bin,
}

#[derive(clap::Args, Debug)]
struct MaterializeArgs {
    #[command(flatten)]
    input: Input,
    /// First step (inclusive).
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Last step (exclusive; default: the end of the run).
    #[arg(long)]
    to: Option<u64>,
    /// World size, for the rank column.
    #[arg(long, default_value_t = 1)]
    world: u32,
    /// Output file (written to a temporary name, then renamed).
    #[arg(long, short)]
    out: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Tsv)]
    format: Format,
    /// The stream: the training run or the held-out validation sequences.
    #[arg(long, value_enum, default_value_t = SplitArg::Train)]
    split: SplitArg,
}

#[derive(clap::Args, Debug)]
pub(super) struct StatsArgs {
    #[command(flatten)]
    input: Input,
    /// Also count every position's source over the whole run (or the first
    /// N steps with --scan-steps) to confirm the realized counts.
    #[arg(long)]
    scan: bool,
    /// Steps to scan with --scan (default: all).
    #[arg(long)]
    scan_steps: Option<u64>,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct PinArgs {
    /// Plan config (TOML).
    #[arg(long, short)]
    config: PathBuf,
    /// Dataset root.
    #[arg(long, required_unless_present = "shapes", conflicts_with = "shapes")]
    dataset: Option<PathBuf>,
    /// Source shapes file instead of a dataset.
    #[arg(long)]
    shapes: Option<PathBuf>,
    /// Output config (written to a temporary name, then renamed).
    #[arg(long, short)]
    out: PathBuf,
}

/// Runs `seqfeed plan`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        PlanCommand::Show(a) => show(a),
        PlanCommand::Materialize(a) => materialize(a),
        PlanCommand::Stats(a) => stats::stats(a),
        PlanCommand::Pin(a) => pin(a),
        PlanCommand::Shapes(a) => write_shapes(a),
    }
}

fn header(plan: &Plan) {
    println!("plan {}", plan.fingerprint());
    println!(
        "mode {}  global batch {}  steps {}  sequences {} (asked {})  seq_len {} x {} B",
        plan.mode(),
        plan.global_batch(),
        plan.steps(),
        plan.total_sequences(),
        plan.requested_sequences(),
        plan.seq_len(),
        plan.token_bytes()
    );
}

fn show(a: ShowArgs) -> anyhow::Result<ExitCode> {
    let plan = a.input.plan()?;
    let split = Split::from(a.split);
    // Check the step and the world before printing anything.
    plan.split_range(split, a.step, a.rank.unwrap_or(0), a.world)?;
    header(&plan);
    if split == Split::Validation {
        println!(
            "validation: {} held-out sequences in {} steps",
            plan.validation_len(),
            plan.split_steps(split)
        );
    }
    let ranks: Vec<u32> = match a.rank {
        Some(r) => vec![r],
        None => (0..a.world).collect(),
    };
    let end = a
        .step
        .saturating_add(a.count.max(1))
        .min(plan.split_steps(split));
    let mut out = BufWriter::new(std::io::stdout().lock());
    for step in a.step..end {
        for &rank in &ranks {
            let block = plan.split_block(split, step, rank, a.world)?;
            let range = plan.split_range(split, step, rank, a.world)?;
            writeln!(
                out,
                "step {step} rank {rank}/{} positions [{}, {})",
                a.world, range.start, range.end
            )?;
            writeln!(out, "  position\tsource\tfile\tindex\toffset\tlen")?;
            for r in &block {
                writeln!(
                    out,
                    "  {}\t{}\t{}\t{}\t{}\t{}",
                    r.position,
                    plan.sources()[r.source as usize].name,
                    plan.file_path(r.source, r.file),
                    r.index,
                    r.offset,
                    r.len
                )?;
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {pos}/{len} steps ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

fn temp_name(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plan".into());
    out.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

fn write_record(
    w: &mut impl Write,
    plan: &Plan,
    format: Format,
    step: u64,
    rank: u32,
    r: &SequenceRef,
) -> std::io::Result<()> {
    match format {
        Format::Tsv => writeln!(
            w,
            "{step}\t{rank}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            r.position,
            r.source,
            plan.sources()[r.source as usize].name,
            r.file,
            plan.file_path(r.source, r.file),
            r.index,
            r.offset,
            r.len
        ),
        Format::Bin => {
            let mut b = [0u8; 40];
            b[0..8].copy_from_slice(&r.position.to_le_bytes());
            b[8..12].copy_from_slice(&r.source.to_le_bytes());
            b[12..16].copy_from_slice(&r.file.to_le_bytes());
            b[16..24].copy_from_slice(&r.index.to_le_bytes());
            b[24..32].copy_from_slice(&r.offset.to_le_bytes());
            b[32..36].copy_from_slice(&r.len.to_le_bytes());
            b[36..40].copy_from_slice(&rank.to_le_bytes());
            w.write_all(&b)
        }
    }
}

fn materialize(a: MaterializeArgs) -> anyhow::Result<ExitCode> {
    let plan = a.input.plan()?;
    let split = Split::from(a.split);
    let steps = plan.split_steps(split);
    // Validate the world (and that a validation stream exists) before
    // creating any file.
    plan.split_range(split, a.from.min(steps.saturating_sub(1)), 0, a.world)?;
    let to = a.to.unwrap_or(steps);
    if a.from >= to || to > steps {
        bail!(
            "step range [{}, {to}) is empty or past the end of the {split} stream ({steps} steps)",
            a.from,
        );
    }
    let tmp = temp_name(&a.out);
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = (|| -> anyhow::Result<u64> {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        if let Format::Tsv = a.format {
            match split {
                Split::Train => writeln!(w, "# seqfeed plan {}", plan.fingerprint())?,
                Split::Validation => {
                    writeln!(w, "# seqfeed plan {} validation", plan.fingerprint())?
                }
            }
            writeln!(
                w,
                "step\trank\tposition\tsource\tsource_name\tfile\tpath\tindex\toffset\tlen"
            )?;
        }
        let bar = progress(to - a.from, "materializing");
        let mut rows = 0u64;
        for step in a.from..to {
            for rank in 0..a.world {
                let block = plan.split_block(split, step, rank, a.world)?;
                for r in &block {
                    write_record(&mut w, &plan, a.format, step, rank, r)?;
                }
                rows += block.len() as u64;
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(rows)
    })();
    match result {
        Ok(rows) => {
            std::fs::rename(&tmp, &a.out)
                .with_context(|| format!("renaming {} to {}", tmp.display(), a.out.display()))?;
            println!(
                "wrote {rows} {split} sequences of steps [{}, {to}) for {} ranks to {}",
                a.from,
                a.world,
                a.out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e.context(format!("writing {}", a.out.display())))
        }
    }
}

fn pin(a: PinArgs) -> anyhow::Result<ExitCode> {
    let input = Input {
        config: a.config.clone(),
        dataset: a.dataset,
        shapes: a.shapes,
    };
    let shapes = input.shapes()?;
    let mut config = PlanConfig::from_file(&a.config)?;
    config.pin(&shapes)?;
    // The pinned config must still make a plan.
    let plan = Plan::new(config.clone(), shapes)?;
    let text = config.to_toml_string()?;
    let tmp = temp_name(&a.out);
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &a.out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), a.out.display()))?;
    println!(
        "pinned {} sources (plan {}) to {}",
        plan.sources().len(),
        plan.fingerprint(),
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn write_shapes(a: ShapesArgs) -> anyhow::Result<ExitCode> {
    let ds = seqfeed_format::DatasetManifests::open(&a.dataset)
        .with_context(|| format!("reading the manifests of dataset {}", a.dataset.display()))?;
    let file = ShapesFile::new(seqfeed_plan::shapes_from_manifests(ds.sources())?);
    if file.fingerprint.as_deref() != Some(ds.fingerprint()) {
        bail!(
            "internal error: the shapes give dataset fingerprint {:?}, the manifests {}",
            file.fingerprint,
            ds.fingerprint()
        );
    }
    let text = file.to_toml_string()?;
    let tmp = temp_name(&a.out);
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &a.out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), a.out.display()))?;
    let files: usize = file.sources.iter().map(|s| s.files.len()).sum();
    println!(
        "wrote the shapes of {} sources ({files} files, dataset {}) to {}",
        file.sources.len(),
        ds.fingerprint(),
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn run_args(args: &[&str]) -> anyhow::Result<ExitCode> {
        let mut v = vec!["plan"];
        v.extend_from_slice(args);
        run(Cli::try_parse_from(v)?.args)
    }

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn setup(tag: &str) -> (Dir, String, String) {
        let dir =
            std::env::temp_dir().join(format!("seqfeed-plan-cli-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let shapes = ShapesFile {
            fingerprint: None,
            sources: ["web", "code"]
                .iter()
                .enumerate()
                .map(|(i, name)| SourceShape {
                    name: name.to_string(),
                    fingerprint: format!("fp-{name}"),
                    seq_len: 8,
                    token_bytes: 2,
                    tokenizer: None,
                    special_tokens: Default::default(),
                    files: (0..3)
                        .map(|f| seqfeed_plan::FileShape {
                            path: format!("{name}/part-{f:05}.seq"),
                            count: 40 + 10 * i as u64,
                            data_offset: 4096,
                        })
                        .collect(),
                })
                .collect(),
        };
        let shapes_path = dir.join("shapes.toml");
        std::fs::write(&shapes_path, shapes.to_toml_string().unwrap()).unwrap();
        let config_path = dir.join("plan.toml");
        std::fs::write(
            &config_path,
            "seed = 3\nglobal_batch = 8\n[run]\nsteps = 12\n[[sources]]\nname = \"web\"\nweight = 0.75\n[[sources]]\nname = \"code\"\nweight = 0.25\n",
        )
        .unwrap();
        (
            Dir(dir),
            config_path.display().to_string(),
            shapes_path.display().to_string(),
        )
    }

    fn plan_of(config: &str, shapes: &str) -> Plan {
        let shapes = ShapesFile::from_file(Path::new(shapes)).unwrap().sources;
        Plan::new(PlanConfig::from_file(Path::new(config)).unwrap(), shapes).unwrap()
    }

    #[test]
    fn materialize_writes_the_plan_exactly() {
        let (dir, config, shapes) = setup("mat");
        let plan = plan_of(&config, &shapes);
        let tsv = dir.0.join("t.tsv").display().to_string();
        let c = [
            "materialize",
            "-c",
            &config,
            "--shapes",
            &shapes,
            "--from",
            "2",
            "--to",
            "7",
            "--world",
            "4",
            "-o",
            &tsv,
        ];
        run_args(&c).unwrap();
        let text = std::fs::read_to_string(&tsv).unwrap();
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .skip(1)
            .collect();
        assert_eq!(rows.len(), 5 * 8);
        for row in rows {
            let f: Vec<&str> = row.split('\t').collect();
            let (step, rank, pos): (u64, u32, u64) = (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            );
            let r = plan.locate(pos);
            assert_eq!(step, pos / 8);
            assert_eq!(u64::from(rank), pos % 8 / 2);
            assert_eq!(f[6], plan.file_path(r.source, r.file));
            assert_eq!(
                f[7..].join(" "),
                format!("{} {} {}", r.index, r.offset, r.len)
            );
        }
        let bin = dir.0.join("t.bin").display().to_string();
        let c = [
            "materialize",
            "-c",
            &config,
            "--shapes",
            &shapes,
            "--format",
            "bin",
            "-o",
            &bin,
        ];
        run_args(&c).unwrap();
        let bytes = std::fs::read(&bin).unwrap();
        assert_eq!(bytes.len() as u64, 40 * plan.total_sequences());
        for (p, rec) in bytes.chunks(40).enumerate() {
            let u64_at = |o: usize| u64::from_le_bytes(rec[o..o + 8].try_into().unwrap());
            let u32_at = |o: usize| u32::from_le_bytes(rec[o..o + 4].try_into().unwrap());
            let r = plan.locate(p as u64);
            assert_eq!(
                (
                    u64_at(0),
                    u32_at(8),
                    u32_at(12),
                    u64_at(16),
                    u64_at(24),
                    u32_at(32)
                ),
                (r.position, r.source, r.file, r.index, r.offset, r.len)
            );
        }
        // No temporary file is left behind.
        let names: Vec<String> = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
    }

    #[test]
    fn materialize_and_show_the_validation_split() {
        let (dir, config, shapes) = setup("val");
        let text = std::fs::read_to_string(&config).unwrap() + "[split]\nseed = 2\nholdout = 0.1\n";
        std::fs::write(&config, text).unwrap();
        let plan = plan_of(&config, &shapes);
        let v = plan.validation_len();
        assert!(v > 8, "{v}");
        let tsv = dir.0.join("v.tsv").display().to_string();
        let c = [
            "materialize",
            "-c",
            &config,
            "--shapes",
            &shapes,
            "--split",
            "validation",
            "--world",
            "2",
            "-o",
            &tsv,
        ];
        run_args(&c).unwrap();
        let text = std::fs::read_to_string(&tsv).unwrap();
        assert!(text.starts_with(&format!("# seqfeed plan {} validation", plan.fingerprint())));
        let rows: Vec<Vec<String>> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .skip(1)
            .map(|l| l.split('\t').map(String::from).collect())
            .collect();
        let want: Vec<SequenceRef> = plan.validation_iter().collect();
        assert_eq!(rows.len(), want.len());
        for (row, r) in rows.iter().zip(&want) {
            assert_eq!(row[2], r.position.to_string());
            assert_eq!(row[6], plan.file_path(r.source, r.file));
            assert_eq!(row[7], r.index.to_string());
        }
        run_args(&[
            "show",
            "-c",
            &config,
            "--shapes",
            &shapes,
            "--split",
            "validation",
        ])
        .unwrap();
        let e = run_args(&[
            "show",
            "-c",
            &config,
            "--shapes",
            &shapes,
            "--split",
            "validation",
            "--step",
            "99",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("step 99"), "{e}");
    }

    #[test]
    fn bad_ranges_and_worlds_are_errors() {
        let (dir, config, shapes) = setup("bad");
        let out = dir.0.join("x.tsv").display().to_string();
        let e =
            run_args(&["show", "-c", &config, "--shapes", &shapes, "--world", "3"]).unwrap_err();
        assert!(e.to_string().contains("not divisible"), "{e}");
        let e =
            run_args(&["show", "-c", &config, "--shapes", &shapes, "--step", "12"]).unwrap_err();
        assert!(e.to_string().contains("step 12"), "{e}");
        let e = run_args(&[
            "materialize",
            "-c",
            &config,
            "--shapes",
            &shapes,
            "--from",
            "5",
            "--to",
            "13",
            "-o",
            &out,
        ])
        .unwrap_err();
        assert!(e.to_string().contains("past the end"), "{e}");
        assert!(!Path::new(&out).exists());
    }

    #[test]
    fn pinned_config_refuses_changed_data() {
        let (dir, config, shapes) = setup("pin");
        let pinned = dir.0.join("pinned.toml").display().to_string();
        run_args(&["pin", "-c", &config, "--shapes", &shapes, "-o", &pinned]).unwrap();
        run_args(&["stats", "-c", &pinned, "--shapes", &shapes, "--scan"]).unwrap();
        let text = std::fs::read_to_string(&shapes)
            .unwrap()
            .replace("fp-code", "fp-code-2");
        std::fs::write(&shapes, text).unwrap();
        let e = run_args(&["stats", "-c", &pinned, "--shapes", &shapes]).unwrap_err();
        assert!(e.to_string().contains("'code' changed"), "{e}");
    }
}
