"""Small models that several test modules build: configurations and weights made to give real-looking output (a
helper module: test modules never import each other)."""

# A QuartzNet of three blocks, each kind of block once: separable or not, residual or not, strided, dilated.
QUARTZNET_SMALL = dict(
    block_channels=[32, 32, 48],
    block_repeats=[1, 2, 1],
    block_kernel_sizes=[11, 9, 1],
    block_strides=[4, 1, 1],
    block_dilations=[1, 2, 1],
    block_residual=[False, True, False],
    block_separable=[True, True, False],
)


def frame_logits(model, inputs):
    """The logits of every frame of a batch of `inputs` (padding left out), (frames, vocabulary)."""
    import torch

    with torch.no_grad():
        logits = model(**inputs).logits
        lengths = model.get_output_lengths(inputs["attention_mask"].sum(-1))
    return torch.cat([logits[i, :n] for i, n in enumerate(lengths)])


def give_words(model, inputs, blank_share=0.45, space_share=0.12, blank=33, space=0):
    """Sets a random CTC model's output biases so that its argmax on `inputs` spells words: every label's mean
    logit over the frames made 0 (a random head favours one letter everywhere: one long word), then the blank and
    the space raised until they win about `blank_share` and `space_share` of the frames. Its transcripts then
    have repeats, blanks and word delimiters, as a trained model's do."""
    import torch

    with torch.no_grad():
        model.lm_head.bias -= frame_logits(model, inputs).mean(0)
        for token, share in ((blank, blank_share), (space, space_share)):
            logits = frame_logits(model, inputs)
            others = torch.cat([logits[:, :token], logits[:, token + 1 :]], 1).max(1).values
            model.lm_head.bias[token] += torch.quantile(others - logits[:, token], share)


def one_channel_head(model, processor, speech, letter, others=-100.0):
    """Sets a random E-Branchformer's CTC head to read one channel of its encoder on `speech`: `letter` (an id)
    where that channel is above its median, space where below, blank otherwise, every other label at `others`
    (-4: a little less likely than blank, so that a beam search has candidates to weigh). Its transcripts then
    have many words with distinct times."""
    import torch

    with torch.no_grad():
        inputs = processor(audio=speech, sampling_rate=16000, return_tensors="pt")
        hidden = model.ebranchformer(**inputs).last_hidden_state[0]
        channel = int(hidden.std(0).argmax())
        model.lm_head.weight.zero_()
        model.lm_head.bias.fill_(others)
        model.lm_head.weight[letter, channel], model.lm_head.weight[0, channel] = 10.0, -10.0
        model.lm_head.bias[[letter, 0]] = torch.tensor([-10.0, 10.0]) * hidden[:, channel].median()
        model.lm_head.bias[33] = 0.0


def course_model(arch, variant, seed=0):
    """A course-layout model with random (for QuartzNet: trained-looking batch norm) weights, in eval mode."""
    import torch
    from course_modules import (
        CourseCTCModel,
        CourseDecoder,
        CourseEBranchformerEncoder,
        CourseQuartzNetEncoder,
        randomize_batch_norms,
    )

    torch.manual_seed(seed)
    if arch == "ebranchformer":
        encoder, decoder = CourseEBranchformerEncoder(seq=variant == "sequential"), CourseDecoder(256)
    else:
        encoder, decoder = (
            CourseQuartzNetEncoder(bias="bias" in variant, nested="nested" in variant),
            CourseDecoder(1024),
        )
    return randomize_batch_norms(CourseCTCModel(encoder, decoder)).eval()
