"""The default main job: a small Transformer learns 1-4 digit reversed addition, then teaches
itself 6, 7 and 8 digits in three self-training rounds (`--mode=selftrain`; `--mode=train` runs
the base training alone). It trains with plain cross-entropy: no self-feedback arm of the loss or
the optimizer beat it in docs/ablations, so those are opt-in (feedback.*, optim.feedback_*).

Every key selffb reads is declared here with a one-line comment; other configs are deltas of it.
"""
import ml_collections


def get_config(arg=None):
  del arg  # No variants of the default.
  c = ml_collections.ConfigDict()
  c.seed = 0  # Seeds parameter init, data generation and order, dropout.

  c.model = ml_collections.ConfigDict()
  c.model.kind = 'decoder'  # selffb/models: decoder, encoder, encdec or lstm. Vocab: tokenizer's.
  c.model.num_layers = 4  # Transformer blocks.
  c.model.num_heads = 4  # Attention heads; must divide d_model.
  c.model.d_model = 64  # Residual stream width.
  c.model.mlp_dim = 256  # MLP hidden width.
  c.model.mlp = 'gelu'  # 'gelu' or 'swiglu'.
  c.model.norm = 'layernorm'  # Pre-norm kind: 'layernorm' or 'rmsnorm'.
  c.model.positions = 'rope'  # 'rope', 'learned' or 'none' (NoPE).
  c.model.rope_base = 10_000.0  # RoPE wavelength base.
  c.model.max_len = 64  # Longest seq: train length and, w/ learned positions, prompt + new tokens.
  c.model.tie_embeddings = True  # Output projection shares the input embedding.
  c.model.use_bias = True  # Biases on the attention and MLP projections (GPT-2 style).
  c.model.dropout = 0.0  # Dropout on attention and MLP outputs (training only).
  c.model.param_dtype = 'float32'  # Parameter storage dtype: 'float32' or 'bfloat16'.
  c.model.dtype = 'float32'  # Compute dtype: 'float32' or 'bfloat16'; logits are always float32.
  c.model.remat = 'none'  # Backward-pass recompute: 'none', 'full', 'dots', 'dots_no_batch'.
  c.model.scan_layers = False  # nn.scan over blocks (compiles once; unrolled ran faster on a CPU).
  c.model.attention = 'einsum'  # 'einsum'/'dot_product' (jax.nn's; cuDNN: docs/scale.md).
  c.model.attention_block = 128  # einsum, no cache: q-blocks this long skip later keys; 0 = 1 block
  c.model.head = 'mlm'  # kind='encoder': 'mlm', 'classify' or 'tag' (tasks mlm, classify, ner).
  c.model.num_labels = 0  # Encoder head 'classify'/'tag': the task's label count.
  c.model.pooling = 'first'  # 'classify': first token via a tanh dense (BERT's pooler) or 'mean'.
  c.model.norm_position = 'pre'  # kind='encoder': 'pre'-norm, or 'post' (BERT: LN after adds).
  c.model.norm_eps = 1e-6  # kind='encoder': norm epsilon (BERT: 1e-12).
  c.model.type_vocab_size = 0  # kind='encoder': token-type embeddings (BERT: 2); 0 for none.
  c.model.init_from = ''  # Start from a run's workdir (best params) or a HF BERT dir; '': scratch.

  c.data = ml_collections.ConfigDict()
  c.data.task = 'addition'  # selffb/tasks: addition text strings pairs feedback mlm classify ner
  c.data.tokenizer = 'byte'  # 'byte' (256 bytes + 3 specials), 'sentencepiece' or 'wordpiece'.
  c.data.tfds_name = ''  # task='text': a prepared tfds dataset by name (e.g. 'lm1b', 'wiki40b/en').
  c.data.data_dir = ''  # tfds_name's data dir ('' = tfds's); else data written ('' <workdir>/data).
  c.data.workers = 0  # task='text': worker processes making batches (grain mp_prefetch); 0: none.
  c.data.batch_size = 128  # Global training batch, in sequences.
  c.data.eval_batch_size = 500  # Sequences per evaluation batch.
  c.data.seq_len = 0  # Train seq length (tokens); 0: the task's longest train example.
  c.data.addition = ml_collections.ConfigDict()
  c.data.addition.min_digits = 1  # Shortest operand in training, in digits.
  c.data.addition.max_digits = 4  # Longest train operand; operand lengths drawn independently.
  c.data.addition.num_train = 100_000  # Training problems.
  c.data.addition.num_validation = 1_000  # Val problems (train distribution, disjoint from train).
  c.data.addition.num_test = 500  # Held-out problems per test length (both operands that long).
  c.data.addition.test_digits = (1, 2, 3, 4, 5, 6, 7, 8)  # Test lengths: in-dist and beyond.
  c.data.addition.format = 'aligned'  # 'plain' (answer+eos) or 'aligned' (zero-padded, fixed len).
  c.data.addition.position_shift = 2  # Training adds a random 0..shift to position ids above 0.
  c.data.text = ml_collections.ConfigDict()
  c.data.text.paths = ''  # task='text' w/o tfds_name: comma-separated UTF-8 files/globs.
  c.data.text.validation_fraction = 0.05  # Local files: each file's last share is validation text.
  c.data.text.feature = ''  # tfds_name's text feature; '' = the dataset's known one, else 'text'.
  c.data.text.train_split = 'train'  # tfds split syntax, e.g. 'train[:95%]'.
  c.data.text.validation_split = ''  # tfds split; '' = 'validation'.
  c.data.text.prepare = True  # Prepare an unprepared tfds_name (needs network) as ArrayRecord.
  c.data.text.encoding_errors = 'error'  # Bad UTF-8: 'error' (stop, name it) or 'replace' (U+FFFD).
  c.data.text.long_docs = 'split'  # Docs over seq_len+1 tokens: 'split', 'truncate' or 'drop'.
  c.data.text.pack = True  # Several docs a row (segment ids, per-doc positions); False: 1 a row.
  c.data.text.shuffle_window = 256  # Rows shuffled within windows this long (pieces of long docs).
  c.data.text.eval_sequences = 256  # Validation rows (from the start of the split) per evaluation.
  c.data.text.train_paths = ''  # Split files (globs), over paths: training, e.g. wiki.train.tokens.
  c.data.text.validation_paths = ''  # Split files: validation (needed with train_paths).
  c.data.text.test_paths = ''  # Split files: an optional 'test' split.
  c.data.text.separator = 'file'  # Local docs: 'file', 'blank_line' or 'wikitext_heading'.
  c.data.sentencepiece = ml_collections.ConfigDict()  # data.tokenizer='sentencepiece'.
  c.data.sentencepiece.model = ''  # A .model file (pad 0, bos 1, eos 2, unk 3); '' trains one.
  c.data.sentencepiece.vocab_size = 1024  # Pieces of a trained model (its cache key with the rest).
  c.data.sentencepiece.model_type = 'unigram'  # 'unigram' or 'bpe'.
  c.data.sentencepiece.character_coverage = 0.9995  # Share of characters covered (1.0: all).
  c.data.sentencepiece.max_sentences = 200_000  # Cap on training lines (sampled by documents).
  c.data.sentencepiece.byte_fallback = True  # Unknown characters as UTF-8 byte pieces (no unk).
  c.data.wordpiece = ml_collections.ConfigDict()  # data.tokenizer='wordpiece' (imported BERT).
  c.data.wordpiece.path = ''  # Dir with tokenizer.json or vocab.txt (+ tokenizer_config.json).
  c.data.mlm = ml_collections.ConfigDict()  # task='mlm': masked-LM on config.data.text's documents.
  c.data.mlm.rate = 0.15  # Share of (non-special) tokens chosen as targets.
  c.data.mlm.mask = 0.8  # Of the chosen, share replaced by the mask token.
  c.data.mlm.random = 0.1  # Of the chosen, share replaced by a random token (the rest kept).
  c.data.mlm.whole_word = False  # Choose whole words (all their pieces) instead of tokens.
  c.data.labelled = ml_collections.ConfigDict()  # tasks 'classify' and 'ner': labelled examples.
  c.data.labelled.tfds_name = ''  # '' built-in synthetic; ner: 'conll2003'; classify: any tfds.
  c.data.labelled.text_feature = ''  # classify: text ('' 'text'); ner: the words ('' 'tokens').
  c.data.labelled.label_feature = ''  # classify: class label ('' 'label'); ner: tags ('' 'ner').
  c.data.labelled.train_split = 'train'  # tfds split syntax, e.g. 'train[:90%]'.
  c.data.labelled.validation_split = 'validation'  # The validation split (early stopping).
  c.data.labelled.test_split = 'test'  # Scored by config.evals as split 'test'.
  c.data.labelled.num_train = 4_000  # Synthetic: training examples.
  c.data.labelled.num_validation = 500  # Synthetic: validation examples.
  c.data.labelled.num_test = 500  # Synthetic: test examples.
  c.data.labelled.prepare = True  # Prepare an unprepared tfds_name in-process (no TF, network).
  c.data.labelled.conll_dir = ''  # ner: CoNLL dir: eng.train/testa/testb or train/valid/test.txt.
  c.data.labelled.train_path = ''  # ner: a local CoNLL training file (over conll_dir, tfds_name).
  c.data.labelled.validation_path = ''  # ner: a local CoNLL validation file.
  c.data.labelled.test_path = ''  # ner: a local CoNLL test file.
  c.data.strings = ml_collections.ConfigDict()  # task='strings': reverse or sort (seq2seq).
  c.data.strings.op = 'reverse'  # 'reverse' or 'sort' the prompt's string.
  c.data.strings.alphabet = 'abcdefghij'  # The strings' symbols.
  c.data.strings.min_length = 1  # Shortest training string.
  c.data.strings.max_length = 8  # Longest training string.
  c.data.strings.num_train = 20_000  # Training strings (a multiset; never a val/test one).
  c.data.strings.num_validation = 500  # Validation strings (training lengths).
  c.data.strings.num_test = 200  # Test strings per test length.
  c.data.strings.test_lengths = (4, 8, 10, 12)  # Test lengths: in-distribution and beyond.
  c.data.pairs = ml_collections.ConfigDict()  # task='pairs': text pairs of a prepared tfds set.
  c.data.pairs.tfds_name = ''  # A prepared dataset (ArrayRecord), e.g. 'wmt14_translate/de-en'.
  c.data.pairs.data_dir = ''  # Its tfds data dir; '' is tfds's default (~/tensorflow_datasets).
  c.data.pairs.source_key = 'en'  # The feature read as the prompt (the source).
  c.data.pairs.target_key = 'de'  # The feature read as the answer (the target).
  c.data.pairs.separator = ' => '  # Appended to the source (where a decoder's answer starts).
  c.data.pairs.train_split = 'train'  # tfds split syntax, e.g. 'train[:95%]'.
  c.data.pairs.validation_split = 'validation'  # The validation split.
  c.data.pairs.test_split = 'test[:500]'  # Scored by config.evals as test_<test_name>.
  c.data.pairs.test_name = 'test'  # The test split's label.
  c.data.pairs.max_bytes = 64  # Each text cut to this many UTF-8 bytes.
  c.data.feedback = ml_collections.ConfigDict()  # task='feedback': recorded feedback (JSONL).
  c.data.feedback.train_path = ''  # Records (selffb/feedback/records.py); '' writes an example.
  c.data.feedback.validation_path = ''  # Held-out records; '' holds out validation_fraction.
  c.data.feedback.validation_fraction = 0.1  # Share of distinct prompts held out (no path).
  c.data.feedback.errors = 'strict'  # Malformed lines: 'strict' (stop, list all) or 'skip'.
  c.data.feedback.rating_scale = (1.0, 5.0)  # (worst, best) rating, mapped onto [0, 1].
  c.data.feedback.labels = 'good=1,bad=0'  # label=signal in [0, 1], comma-separated.
  c.data.feedback.label_loss = 'weighted'  # Labels: 'weighted' (signal is F's rating) or 'kto'.
  c.data.feedback.correction_weight = 1.0  # Loss weight of a (prompt, correction) example.
  c.data.feedback.corrected_original = 'downweight'  # Replaced response: drop/keep/downweight.
  c.data.feedback.original_weight = 0.2  # Its loss weight under 'downweight'.
  c.data.feedback.correction_pairs = False  # Also a (correction > response) preference pair.
  c.data.feedback.pair_sft_weight = 0.0  # Supervised loss weight of a pair's chosen response.
  c.data.feedback.base_task = ''  # Task whose sequence format and test splits apply ('': text).
  c.data.feedback.example_prompts = 2_000  # Generated example (no train_path): problems.
  c.data.feedback.example_digits = (5, 6)  # Its operand lengths (base_task 'addition').

  c.feedback = ml_collections.ConfigDict()
  # The arms; F is the fused feedback below, stop-gradient'ed; p is the target's softmax
  # probability, gradient through it: ce; one_minus CE*(1-F); focal CE*(1-p)^gamma (Lin et al.);
  # focal_sg CE*(1-F)^gamma (focal's value, (1-F)^gamma a constant; 'focal' before issue 35);
  # one_minus_p CE*(1-p) (seed 000 5.2.2's code as written; focal at gamma 1); confidence CE*F.
  c.feedback.loss = 'ce'  # The loss arm (above); ce won docs/ablations.
  c.feedback.gamma = 2.0  # Exponent of focal and focal_sg.
  c.feedback.blend = 'none'  # loss=(1-a_t)CE+a_t*arm; a_t: 'none' (1), 'linear'/'cosine' 0->1.
  c.feedback.blend_fraction = 0.5  # Share of train.num_steps over which a_t reaches 1.
  c.feedback.weights = ml_collections.ConfigDict()  # F = sum_i w_i f_i; w normalised to sum 1.
  c.feedback.weights.prob = 1.0  # Target-token probability p_t.
  c.feedback.weights.margin = 0.0  # sigmoid(target logit - the largest other logit).
  c.feedback.weights.entropy = 0.0  # 1 - normalised entropy of the prediction.
  c.feedback.weights.verifier = 0.0  # Per-sequence verifier score from the batch ('verifier' key).
  c.feedback.weights.rating = 0.0  # Per-seq recorded rating in [0, 1] from batch ('rating' key).
  c.feedback.preference = ml_collections.ConfigDict()  # Pairs (DPO), KTO-style labels.
  c.feedback.preference.beta = 0.1  # DPO/KTO beta: scale of log(pi / pi_ref).
  c.feedback.preference.weight = 1.0  # Weight of the preference terms next to the weighted CE.
  c.feedback.preference.kto_desirable = 1.0  # KTO lambda_D (desirable rows).
  c.feedback.preference.kto_undesirable = 1.0  # KTO lambda_U (undesirable rows).

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 3e-3  # Peak learning rate.
  c.optim.schedule = 'warmup_cosine'  # 'constant', 'warmup_cosine', 'warmup_rsqrt' or 'wsd'.
  c.optim.warmup_steps = 100  # Linear warmup from 0 to lr.
  c.optim.final_lr_ratio = 0.0  # Learning rate at the end of the decay, as a fraction of lr.
  c.optim.decay_fraction = 0.2  # wsd only: share of the steps spent in the final linear decay.
  c.optim.b1 = 0.9  # Adam first-moment decay.
  c.optim.b2 = 0.98  # Adam second-moment decay.
  c.optim.eps = 1e-9  # Adam epsilon.
  c.optim.weight_decay = 0.01  # Decoupled weight decay on matrices (not on norms, biases).
  c.optim.clip_norm = 1.0  # Global gradient-norm clip; 0 disables.
  c.optim.feedback_scale = 'none'  # none/relative: s=r/EMA(r), r=(1-F_b+e)/(EMA(1-F)+e), e floor
  c.optim.feedback_scale_at = 'gradients'  # Scale 'gradients' (before Adam) or 'updates' (after).
  c.optim.feedback_ema = 0.99  # Decay of the running means EMA(F) and EMA(r) of the feedback scale.
  c.optim.feedback_scale_min = 0.5  # Lower clip of the feedback scale.
  c.optim.feedback_scale_max = 2.0  # Upper clip of the feedback scale.
  c.optim.freeze = 'none'  # Encoder: none, head_only, top_k (head + top layers), embeddings.
  c.optim.top_k = 2  # freeze='top_k': the top layers that train.
  c.optim.feedback_floor = 1e-3  # Relative scale's hardness floor e > 0 (defines r at F = 1).

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 1_000  # Optimizer steps.
  c.train.log_every = 100  # Steps between progress lines and metric writes.
  c.train.eval_every = 250  # Steps between validation evaluations.
  c.train.checkpoint_every = 500  # Steps between checkpoints (one is always written at the end).
  c.train.max_checkpoints = 2  # Checkpoints kept on disk.
  c.train.patience = 0  # Evals w/o val-loss improvement before stop; 0 disables.
  c.train.select_metric = ''  # Best params, early stop: '' val CE; 'f1'/'accuracy' (higher better).
  c.train.grad_accum_steps = 1  # Microbatches per step; the batch is split, gradients summed.
  c.train.max_nonfinite_steps = 5  # Consecutive skipped (non-finite) steps before the run stops.
  c.train.xla_cpu_onednn = True  # On x86 CPUs oneDNN runs the train and eval steps' dots.
  c.train.reuse_host_memory = True  # train/selftrain: glibc keeps freed mem (no page faults/step).

  c.sample = ml_collections.ConfigDict()
  c.sample.temperature = 0.0  # 0 is greedy; otherwise logits are divided by it before sampling.
  c.sample.top_k = 0  # Sample among the k most likely tokens; 0 disables.
  c.sample.top_p = 1.0  # Sample among the fewest tokens holding this much probability; 1 disables.
  c.sample.max_new_tokens = 32  # New tokens per prompt, end token included.
  c.sample.seed = 0  # Sampling seed (token i of a row uses fold_in(seed key, i)).

  c.selftrain = ml_collections.ConfigDict()  # --mode=selftrain: train/sample/score/keep/retrain.
  c.selftrain.rounds = 3  # Round cap after round 0 (base training on config.data).
  c.selftrain.init_workdir = ''  # Round 0 uses this train run's best params instead of training.
  c.selftrain.start_digits = 6  # Round-1 prompt digits (0: max_digits + 1); +1 per round.
  c.selftrain.prompts_per_round = 8_000  # New problems per round (never test/val; docs/ablations).
  c.selftrain.samples_per_prompt = 1  # k candidates per prompt (k > 1 needs temperature > 0).
  c.selftrain.temperature = 0.0  # Candidate sampling temperature (0: greedy).
  c.selftrain.top_k = 0  # Candidate sampling top-k (0 disables).
  c.selftrain.weights = ml_collections.ConfigDict()  # Q = sum_i w_i f_i, weights normalised to 1.
  c.selftrain.weights.confidence_mean = 0.0  # Mean answer-token probability.
  c.selftrain.weights.confidence_min = 0.0  # Least answer-token probability.
  c.selftrain.weights.vote = 0.0  # Share of the k candidates with the same answer (majority vote).
  c.selftrain.weights.format = 0.0  # 1 if the answer has the task's form (digits, right length).
  c.selftrain.weights.verifier = 1.0  # 1 if selftrain.verifier accepts the answer.
  c.selftrain.weights.rating = 0.0  # Recorded rating in [0, 1] from selftrain.ratings_file.
  c.selftrain.weights.consistency = 0.0  # Share of the task's equivalent prompts answered alike.
  c.selftrain.verifier = 'task'  # 'task' (exact check), '', or 'module:fn' (prompt, answer)->bool.
  c.selftrain.ratings_file = ''  # JSONL {"prompt", "answer", "rating"}; unrated candidates get 0.
  c.selftrain.theta = 1.0  # Keep a prompt's best candidate if Q >= theta.
  c.selftrain.keep_top_fraction = 1.0  # Then keep only this top share of prompts by Q.
  c.selftrain.mix = 0.5  # Share of training examples drawn from the kept (self-labelled) samples.
  c.selftrain.max_self_examples = 0  # Cap on self-labelled train examples (newest kept); 0: none.
  c.selftrain.steps_per_round = 400  # Optimizer steps per round, from the previous round's weights.
  c.selftrain.lr = 1e-3  # Peak learning rate of a round (warmup, then cosine to 0).
  c.selftrain.warmup_steps = 20  # Warmup steps of a round.
  c.selftrain.val_per_length = 200  # Validation problems per test length (picks the stop round).
  c.selftrain.target_digits = 0  # Stop once val exact match at this length >= target (0: off).
  c.selftrain.target_accuracy = 0.99  # The target for target_digits.
  c.selftrain.patience = 0  # Rounds w/o better mean val exact match before stop; 0: off.
  c.selftrain.control = False  # Also train same rounds w/o self-labelled data, for the report.
  c.selftrain.operands = 'one_n'  # Round prompts: 'one_n' (other operand 1..n digits) or 'both_n'.
  c.selftrain.mixing = 'pooled'  # 'pooled': mix of all kept; 'rounds': mix newest, rest by weight.
  c.selftrain.base_weight = 16.0  # mixing='rounds': original data's weight (each older round: 1).
  c.selftrain.keep_optimizer = False  # Round starts from the last round's Adam state (else fresh).
  c.selftrain.schedule = 'optim'  # Round lr shape: 'optim' (optim.schedule) or one of its names.
  c.selftrain.decay_fraction = 0.2  # Round schedule 'wsd': share of the round's steps in the decay.

  c.finetune = ml_collections.ConfigDict()  # --mode=finetune: train on recorded feedback.
  c.finetune.init_workdir = ''  # Start and DPO reference: this run's best params ('': scratch).

  c.evals = ml_collections.ConfigDict()  # Evaluators run on the best parameters after training.
  c.evals.exact_match = ml_collections.ConfigDict()  # Greedy exact match on the test splits.
  c.evals.exact_match.type = 'greedy_exact_match'  # 'greedy_exact_match' or 'teacher_forced'.
  c.evals.exact_match.splits = 'test_*'  # Glob over split names; '*' labels the results.

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # Data-parallel axis size; -1 takes the devices the other axes leave.
  c.mesh.fsdp = 1  # Parameter-sharding axis size.
  c.mesh.tensor = 1  # Tensor-parallel axis size.
  c.mesh.rules = ml_collections.ConfigDict()  # Logical parameter axis -> mesh axis ('' replicates).
  c.mesh.rules.embed = 'fsdp'  # d_model: every weight has it, so FSDP shards every weight.
  c.mesh.rules.heads = 'tensor'  # Attention heads: tensor parallelism.
  c.mesh.rules.mlp = 'tensor'  # MLP hidden dimension: tensor parallelism.
  c.mesh.rules.head_dim = ''  # Per-head width: replicated.
  c.mesh.rules.vocab = ''  # Vocabulary (259 bytes does not split evenly): replicated.
  c.mesh.rules.layers = ''  # The stacked layer axis of scanned blocks: replicated.

  c.slurm = ml_collections.ConfigDict()  # --mode=sweep --sweep_executor=slurm: a job an entry.
  c.slurm.partition = ''  # sbatch --partition; '' is the cluster's default.
  c.slurm.account = ''  # sbatch --account; '' for none.
  c.slurm.qos = ''  # sbatch --qos; '' for none.
  c.slurm.constraint = ''  # sbatch --constraint (node features, e.g. 'a100'); '' for none.
  c.slurm.nodes = 1  # Nodes per job; > 1 runs the entry with --multihost, one process a node.
  c.slurm.gpus_per_node = 0  # GPUs per node (sbatch --gpus-per-node); 0: CPU-only jobs.
  c.slurm.cpus_per_task = 2  # CPU cores of each job's process (sbatch --cpus-per-task).
  c.slurm.mem_gb = 16  # Memory per node in GB (sbatch --mem); 0 leaves the cluster's default.
  c.slurm.timeout_min = 120  # Time limit of a job in minutes (sbatch --time; submitit_local too).
  c.slurm.array_parallelism = 64  # Most of the sweep's jobs running at once (job array %N).
  c.slurm.setup = ()  # Shell lines run before each job, e.g. ('module load cuda',).
  c.slurm.extra = ()  # Other sbatch options as 'name=value' strings, e.g. ('reservation=r1',).
  return c
