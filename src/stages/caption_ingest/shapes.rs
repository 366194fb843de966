//! `builtin:shapes`: procedurally rendered scenes with captions and hard negatives.
//!
//! A scene is 1..=3 objects on a plain black background, each in its own cell of
//! a 3×3 grid (so objects never overlap and spatial relations are well defined:
//! "A is left of B" means A's grid column is smaller than B's, "A is above B"
//! means A's grid row is smaller, whatever the other coordinate). Within a scene
//! no two objects share both colour and shape, so "the red circle" is unique.
//!
//! Captions and negatives are built from structured [`Claim`]s and rendered to
//! text; every negative is checked false against the scene (and its positive
//! true) with [`Claim::holds`] before it is emitted.

use super::dataset::{Dataset, Negative, Options, Record};
use super::rng::Rng;
use crate::stages::StageContext;

pub(super) const SHAPES: &[&str] = &["circle", "square", "triangle", "diamond", "cross"];

pub(super) const COLORS: &[(&str, [u8; 3])] = &[
    ("red", [220, 40, 40]),
    ("green", [40, 180, 60]),
    ("blue", [50, 90, 230]),
    ("yellow", [240, 220, 40]),
    ("purple", [150, 60, 200]),
    ("orange", [250, 140, 20]),
    ("white", [245, 245, 245]),
    ("gray", [130, 130, 130]),
];

pub(super) const TEMPLATES: &[&str] =
    &["a photo of a {}.", "a rendering of a {}.", "a {} on a plain background.", "a simple drawing of a {}."];

/// Grid cell names, `[row][col]`.
const CELLS: [[&str; 3]; 3] = [
    ["upper left", "upper middle", "upper right"],
    ["middle left", "center", "middle right"],
    ["lower left", "lower middle", "lower right"],
];

const NUMBERS: [&str; 4] = ["zero", "one", "two", "three"];

/// Stream id for scene generation (see [`Rng::for_item`]).
const STREAM_SCENE: u64 = 1;

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Object {
    pub color: usize,
    pub shape: usize,
    pub large: bool,
    pub row: u8,
    pub col: u8,
    /// Centre and half extent as fractions of the image side (resolution-independent).
    cx: f32,
    cy: f32,
    half: f32,
}

/// Objects sorted left to right (by column, then top to bottom).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Scene {
    pub objects: Vec<Object>,
}

/// A description of one object; unset attributes match anything.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Desc {
    pub large: Option<bool>,
    pub color: Option<usize>,
    pub shape: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rel {
    LeftOf,
    RightOf,
    Above,
    Below,
}

const RELS: [Rel; 4] = [Rel::LeftOf, Rel::RightOf, Rel::Above, Rel::Below];

/// What a caption asserts about an image.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Claim {
    /// There are distinct objects matching each description.
    All(Vec<Desc>),
    /// There are two distinct objects matching the descriptions, in that relation.
    Rel(Desc, Rel, Desc),
}

/// One generated image with everything said about it.
pub(super) struct Generated {
    /// The structured truth the negatives were checked against (tests re-check it).
    #[cfg_attr(not(test), allow(dead_code))]
    pub scene: Scene,
    pub pixels: Vec<u8>,
    pub short: String,
    pub long: String,
    pub label: usize,
    /// `(subset, positive, negative)`.
    pub negatives: Vec<(&'static str, Claim, Claim)>,
}

impl Desc {
    fn of(o: &Object) -> Desc {
        Desc { large: None, color: Some(o.color), shape: o.shape }
    }
    fn matches(&self, o: &Object) -> bool {
        self.shape == o.shape && self.color.is_none_or(|c| c == o.color) && self.large.is_none_or(|l| l == o.large)
    }
    fn text(&self) -> String {
        let mut words = Vec::with_capacity(3);
        if let Some(large) = self.large {
            words.push(if large { "large" } else { "small" });
        }
        if let Some(c) = self.color {
            words.push(COLORS[c].0);
        }
        words.push(SHAPES[self.shape]);
        let phrase = words.join(" ");
        format!("{} {phrase}", article(&phrase))
    }
}

impl Rel {
    fn holds(self, a: &Object, b: &Object) -> bool {
        match self {
            Rel::LeftOf => a.col < b.col,
            Rel::RightOf => a.col > b.col,
            Rel::Above => a.row < b.row,
            Rel::Below => a.row > b.row,
        }
    }
    fn text(self) -> &'static str {
        match self {
            Rel::LeftOf => "to the left of",
            Rel::RightOf => "to the right of",
            Rel::Above => "above",
            Rel::Below => "below",
        }
    }
}

impl Claim {
    pub(super) fn holds(&self, scene: &Scene) -> bool {
        let objs = &scene.objects;
        match self {
            Claim::All(descs) => assign(descs, objs, 0),
            Claim::Rel(a, rel, b) => objs
                .iter()
                .enumerate()
                .any(|(i, oa)| a.matches(oa) && objs.iter().enumerate().any(|(j, ob)| i != j && b.matches(ob) && rel.holds(oa, ob))),
        }
    }

    pub(super) fn text(&self) -> String {
        match self {
            Claim::All(descs) => join_and(&descs.iter().map(Desc::text).collect::<Vec<_>>()),
            Claim::Rel(a, rel, b) => format!("{} {} {}", a.text(), rel.text(), b.text()),
        }
    }
}

/// Whether the descriptions can be matched to pairwise distinct objects
/// (`used` is a bit mask of objects already taken; scenes have at most 3).
fn assign(descs: &[Desc], objs: &[Object], used: u32) -> bool {
    match descs.split_first() {
        None => true,
        Some((d, rest)) => {
            objs.iter().enumerate().any(|(i, o)| used & (1 << i) == 0 && d.matches(o) && assign(rest, objs, used | (1 << i)))
        }
    }
}

/// "a" or "an" before `phrase` (by its first letter; good enough for our vocabulary).
pub(super) fn article(phrase: &str) -> &'static str {
    if phrase.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" }
}

/// "x", "x and y", "x, y and z".
fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Generates image `index` of the dataset for `seed`. Each image has its own
/// random stream, so an image does not depend on how many come before it.
pub(super) fn generate(seed: u64, index: u64, max_objects: usize, resolution: usize) -> Generated {
    let mut rng = Rng::for_item(seed, STREAM_SCENE, index);
    let scene = random_scene(&mut rng, max_objects.clamp(1, 3));
    let pixels = render(&scene, resolution);
    let short = short_caption(&scene);
    let long = long_caption(&scene, &mut rng);
    let label = class_label(&scene);
    let negatives = negatives(&scene, &mut rng);
    Generated { scene, pixels, short, long, label, negatives }
}

fn random_scene(rng: &mut Rng, max_objects: usize) -> Scene {
    let n = 1 + rng.below(max_objects);
    let mut cells: Vec<u8> = (0..9).collect();
    rng.shuffle(&mut cells);
    let cell = 1.0 / 3.0;
    let mut objects: Vec<Object> = Vec::with_capacity(n);
    for &c in &cells[..n] {
        let (color, shape) = loop {
            let pair = (rng.below(COLORS.len()), rng.below(SHAPES.len()));
            if !objects.iter().any(|o| (o.color, o.shape) == pair) {
                break pair;
            }
        };
        let large = rng.chance();
        // Half extent plus jitter stays below half a cell: objects never overlap.
        let (half, jitter) = if large { (0.42 * cell, 0.06 * cell) } else { (0.24 * cell, 0.2 * cell) };
        let (row, col) = (c / 3, c % 3);
        let cx = (col as f32 + 0.5) * cell + (rng.unit() * 2.0 - 1.0) * jitter;
        let cy = (row as f32 + 0.5) * cell + (rng.unit() * 2.0 - 1.0) * jitter;
        objects.push(Object { color, shape, large, row, col, cx, cy, half });
    }
    objects.sort_by_key(|o| (o.col, o.row));
    Scene { objects }
}

/// Whether normalised point (u, v) ∈ [-1, 1]² lies inside the shape.
fn inside(shape: usize, u: f32, v: f32) -> bool {
    let (au, av) = (u.abs(), v.abs());
    match SHAPES[shape] {
        "circle" => u * u + v * v <= 1.0,
        "square" => au <= 0.85 && av <= 0.85,
        // Apex up at v = -1, base at v = 0.8.
        "triangle" => (-1.0..=0.8).contains(&v) && au <= (v + 1.0) / 1.8,
        "diamond" => au + av <= 1.0,
        "cross" => (au <= 0.3 && av <= 1.0) || (av <= 0.3 && au <= 1.0),
        _ => false,
    }
}

/// Renders HWC RGB with 2×2 supersampling (cheap anti-aliasing).
pub(super) fn render(scene: &Scene, res: usize) -> Vec<u8> {
    let mut px = vec![0u8; res * res * 3];
    let r = res as f32;
    for o in &scene.objects {
        let lo = |c: f32| (((c - o.half) * r).floor().max(0.0)) as usize;
        let hi = |c: f32| (((c + o.half) * r).ceil().min(r)) as usize;
        let rgb = COLORS[o.color].1;
        for y in lo(o.cy)..hi(o.cy) {
            for x in lo(o.cx)..hi(o.cx) {
                let mut hits = 0u32;
                for (sx, sy) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
                    let u = ((x as f32 + sx) / r - o.cx) / o.half;
                    let v = ((y as f32 + sy) / r - o.cy) / o.half;
                    hits += inside(o.shape, u, v) as u32;
                }
                if hits > 0 {
                    let at = (y * res + x) * 3;
                    for ch in 0..3 {
                        // Objects own disjoint cells, so blending over the background suffices.
                        let blended = (px[at + ch] as u32 * (4 - hits) + rgb[ch] as u32 * hits + 2) / 4;
                        px[at + ch] = blended as u8;
                    }
                }
            }
        }
    }
    px
}

/// Alt-text style: "red circle, blue square and green cross", left to right.
fn short_caption(scene: &Scene) -> String {
    let parts: Vec<String> = scene.objects.iter().map(|o| format!("{} {}", COLORS[o.color].0, SHAPES[o.shape])).collect();
    join_and(&parts)
}

/// Recaption style from a few fixed templates; objects in random order, each
/// placed relative to the previous one.
fn long_caption(scene: &Scene, rng: &mut Rng) -> String {
    let mut order: Vec<usize> = (0..scene.objects.len()).collect();
    rng.shuffle(&mut order);
    let describe = |o: &Object| {
        let size = if o.large { "large" } else { "small" };
        let phrase = format!("{size} {} {}", COLORS[o.color].0, SHAPES[o.shape]);
        (format!("{} {phrase}", article(&phrase)), CELLS[o.row as usize][o.col as usize])
    };
    let mut sentences = Vec::with_capacity(order.len() + 1);
    let first = &scene.objects[order[0]];
    let (what, pos) = describe(first);
    sentences.push(if rng.chance() {
        format!("The image shows {what} in the {pos}.")
    } else {
        format!("In the {pos} of the image there is {what}.")
    });
    for pair in order.windows(2) {
        let (prev, cur) = (&scene.objects[pair[0]], &scene.objects[pair[1]]);
        let dir = if cur.col > prev.col {
            "To its right"
        } else if cur.col < prev.col {
            "To its left"
        } else if cur.row > prev.row {
            "Below it"
        } else {
            "Above it"
        };
        let (what, pos) = describe(cur);
        sentences.push(format!("{dir} is {what}, in the {pos}."));
    }
    let n = scene.objects.len();
    let (count, plural) = (NUMBERS[n], if n == 1 { "" } else { "s" });
    sentences.push(if rng.chance() {
        format!("There {} {count} object{plural} in total, on a plain black background.", if n == 1 { "is" } else { "are" })
    } else {
        capitalize(&format!("the background is plain black, and the scene contains {count} object{plural}."))
    });
    sentences.join(" ")
}

/// The shape of the largest object; ties go to the leftmost.
fn class_label(scene: &Scene) -> usize {
    scene.objects.iter().find(|o| o.large).unwrap_or(&scene.objects[0]).shape
}

/// One negative per applicable SugarCrepe subset.
fn negatives(scene: &Scene, rng: &mut Rng) -> Vec<(&'static str, Claim, Claim)> {
    let objs = &scene.objects;
    let n = objs.len();
    let base: Vec<Desc> = objs.iter().map(Desc::of).collect();
    let with = |i: usize, d: Desc| {
        let mut v = base.clone();
        v[i] = d;
        v
    };
    // Colours no object of this shape has / shapes no object of this colour has.
    let free_colors =
        |shape: usize| -> Vec<usize> { (0..COLORS.len()).filter(|&c| !objs.iter().any(|o| o.shape == shape && o.color == c)).collect() };
    let free_shapes =
        |color: usize| -> Vec<usize> { (0..SHAPES.len()).filter(|&s| !objs.iter().any(|o| o.color == color && o.shape == s)).collect() };
    let true_rels = |a: &Object, b: &Object| -> Vec<Rel> { RELS.into_iter().filter(|r| r.holds(a, b)).collect() };
    let mut pairs: Vec<(usize, usize)> = (0..n).flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j))).collect();
    rng.shuffle(&mut pairs);

    let mut out = Vec::new();
    let mut push = |subset: &'static str, pos: Claim, neg: Claim| {
        // The guarantee: positive true, negative false for this scene.
        if pos.holds(scene) && !neg.holds(scene) && pos.text() != neg.text() {
            out.push((subset, pos, neg));
        }
    };

    let i = rng.below(n);
    if let Some(c) = rng.pick(&free_colors(objs[i].shape)) {
        push("replace_att", Claim::All(base.clone()), Claim::All(with(i, Desc { color: Some(c), ..base[i] })));
    }
    let i = rng.below(n);
    if let Some(s) = rng.pick(&free_shapes(objs[i].color)) {
        push("replace_obj", Claim::All(base.clone()), Claim::All(with(i, Desc { shape: s, ..base[i] })));
    }
    if let Some(&(i, j)) = pairs.first() {
        let truths = true_rels(&objs[i], &objs[j]);
        let falses: Vec<Rel> = RELS.into_iter().filter(|r| !truths.contains(r)).collect();
        if let (Some(r), Some(f)) = (rng.pick(&truths), rng.pick(&falses)) {
            push("replace_rel", Claim::Rel(base[i], r, base[j]), Claim::Rel(base[i], f, base[j]));
        }
    }
    if let Some(&(i, j)) = pairs.iter().find(|&&(i, j)| i < j && objs[i].color != objs[j].color && objs[i].shape != objs[j].shape) {
        let mut neg = base.clone();
        neg[i].color = base[j].color;
        neg[j].color = base[i].color;
        push("swap_att", Claim::All(base.clone()), Claim::All(neg));
    }
    // Shapes trade places in a relational caption; attributes stay put.
    for &(i, j) in &pairs {
        if objs[i].shape == objs[j].shape {
            continue;
        }
        let Some(r) = rng.pick(&true_rels(&objs[i], &objs[j])) else {
            continue;
        };
        let pos = Claim::Rel(base[i], r, base[j]);
        let neg = Claim::Rel(Desc { shape: base[j].shape, ..base[i] }, r, Desc { shape: base[i].shape, ..base[j] });
        if !neg.holds(scene) {
            push("swap_obj", pos, neg);
            break;
        }
    }
    let absent: Vec<usize> = (0..SHAPES.len()).filter(|&s| !objs.iter().any(|o| o.shape == s)).collect();
    if let Some(s) = rng.pick(&absent) {
        let mut neg = base.clone();
        neg.push(Desc { large: None, color: Some(rng.below(COLORS.len())), shape: s });
        push("add_obj", Claim::All(base.clone()), Claim::All(neg));
    }
    let i = rng.below(n);
    if rng.chance() {
        // Add a size the object does not have.
        push("add_att", Claim::All(base.clone()), Claim::All(with(i, Desc { large: Some(!objs[i].large), ..base[i] })));
    } else if let Some(c) = rng.pick(&free_colors(objs[i].shape)) {
        // Add a colour to a bare shape that no object of that shape has.
        let pos = with(i, Desc { color: None, ..base[i] });
        push("add_att", Claim::All(pos), Claim::All(with(i, Desc { color: Some(c), ..base[i] })));
    }
    out
}

/// The `builtin:shapes` source: `opts.images` generated scenes.
pub(super) fn ingest(ctx: &StageContext, opts: &Options) -> anyhow::Result<Dataset> {
    let res = opts.resolution as usize;
    let mut data = Dataset::new(ctx, opts, SHAPES, TEMPLATES)?;
    ctx.progress().set_length(opts.images as u64);
    for index in 0..opts.images {
        if index % 64 == 0 {
            ctx.check_cancelled()?;
            ctx.progress().set_position(index as u64);
        }
        let g = generate(opts.seed, index as u64, opts.max_objects, res);
        let record =
            Record { short: vec![g.short], long: vec![g.long], label: Some(g.label), source: format!("shapes/{index}"), split: None };
        let at = data.push(&g.pixels, record)?;
        for (subset, pos, neg) in g.negatives {
            data.add_negative(Negative { index: at, subset: subset.to_owned(), positive: pos.text(), negative: neg.text() })?;
        }
    }
    ctx.progress().set_position(opts.images as u64);
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(color: usize, shape: usize, large: bool, row: u8, col: u8) -> Object {
        Object { color, shape, large, row, col, cx: 0.5, cy: 0.5, half: 0.1 }
    }

    #[test]
    fn claims_evaluate_against_scenes() {
        // red circle (upper left, large), blue square (lower right, small).
        let scene = Scene { objects: vec![obj(0, 0, true, 0, 0), obj(2, 1, false, 2, 2)] };
        let red_circle = Desc { large: None, color: Some(0), shape: 0 };
        let blue_square = Desc { large: None, color: Some(2), shape: 1 };
        assert!(Claim::All(vec![red_circle, blue_square]).holds(&scene));
        assert!(!Claim::All(vec![red_circle, red_circle]).holds(&scene), "two descriptions need two objects");
        assert!(!Claim::All(vec![Desc { large: Some(false), ..red_circle }]).holds(&scene));
        assert!(Claim::All(vec![Desc { color: None, ..red_circle }]).holds(&scene));
        assert!(Claim::Rel(red_circle, Rel::LeftOf, blue_square).holds(&scene));
        assert!(Claim::Rel(red_circle, Rel::Above, blue_square).holds(&scene));
        assert!(!Claim::Rel(red_circle, Rel::RightOf, blue_square).holds(&scene));
        assert!(!Claim::Rel(blue_square, Rel::Above, red_circle).holds(&scene));
        assert_eq!(Claim::Rel(red_circle, Rel::LeftOf, blue_square).text(), "a red circle to the left of a blue square");
        let orange = Desc { large: Some(true), color: Some(5), shape: 2 };
        assert_eq!(Claim::All(vec![orange, red_circle, blue_square]).text(), "a large orange triangle, a red circle and a blue square");
        assert_eq!(Claim::All(vec![Desc { large: None, ..orange }]).text(), "an orange triangle");
    }

    #[test]
    fn negatives_are_false_and_every_subset_is_plentiful() {
        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
        for index in 0..2000 {
            let g = generate(3, index, 3, 16);
            for (subset, pos, neg) in &g.negatives {
                assert!(pos.holds(&g.scene), "{subset}: positive {:?} false for {:?}", pos.text(), g.scene);
                assert!(!neg.holds(&g.scene), "{subset}: negative {:?} true for {:?}", neg.text(), g.scene);
                assert_ne!(pos.text(), neg.text());
                *counts.entry(subset).or_default() += 1;
            }
        }
        for subset in ["replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj", "add_att", "add_obj"] {
            let n = counts.get(subset).copied().unwrap_or(0);
            assert!(n >= 700, "subset {subset} has only {n} examples: {counts:?}");
        }
    }

    #[test]
    fn scenes_are_well_formed() {
        for index in 0..500 {
            let g = generate(11, index, 3, 32);
            let objs = &g.scene.objects;
            assert!((1..=3).contains(&objs.len()));
            for (a, oa) in objs.iter().enumerate() {
                // Inside its own cell: no overlap with neighbours.
                let cell = 1.0 / 3.0;
                assert!(oa.cx - oa.half >= oa.col as f32 * cell - 1e-6 && oa.cx + oa.half <= (oa.col + 1) as f32 * cell + 1e-6);
                assert!(oa.cy - oa.half >= oa.row as f32 * cell - 1e-6 && oa.cy + oa.half <= (oa.row + 1) as f32 * cell + 1e-6);
                for ob in &objs[a + 1..] {
                    assert!((oa.row, oa.col) != (ob.row, ob.col));
                    assert!((oa.color, oa.shape) != (ob.color, ob.shape));
                }
            }
            assert_eq!(g.pixels.len(), 32 * 32 * 3);
            assert!(g.pixels.iter().any(|&p| p > 0), "something is drawn");
            assert!(SHAPES[g.label] == SHAPES[objs.iter().find(|o| o.large).unwrap_or(&objs[0]).shape]);
            assert!(g.long.starts_with("The image shows") || g.long.starts_with("In the "));
        }
        let one = generate(5, 0, 1, 32);
        assert_eq!(one.scene.objects.len(), 1);
        assert!(!one.negatives.iter().any(|(s, ..)| s.starts_with("swap") || *s == "replace_rel"));
    }

    #[test]
    fn captions_read_well() {
        let scene = Scene { objects: vec![obj(0, 0, true, 0, 0), obj(2, 1, false, 0, 2)] };
        assert_eq!(short_caption(&scene), "red circle and blue square");
        let long = long_caption(&scene, &mut Rng::new(1));
        assert!(long.contains("large red circle in the upper left") || long.contains("small blue square"), "{long}");
        assert!(long.contains("To its right is") || long.contains("To its left is"), "{long}");
        assert!(long.ends_with("2 objects.") || long.contains("two objects"), "{long}");
    }
}
