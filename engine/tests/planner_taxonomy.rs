//! The planner's behaviour, one example per row of the conflict taxonomy (DESIGN §5) and per rule of
//! issue 3. Each test sets up what both sides agreed on (`base`), what another device did (`remote`)
//! and what this device did (`local`), then syncs to the end and shows the converged tree.
//!
//! Files are written `/path = content`; conflicted copies are stamped
//! `(conflicted copy from laptop 2025-03-04 050607)`.

mod planner_support;

use bvfs_engine::model::{NamePolicy, NodeIdSet};
use bvfs_engine::planner::{DeleteBrake, OpKind, Report, Side, SyncedChange};
use planner_support::{World, id};

const COPY: &str = "(conflicted copy from laptop 2025-03-04 050607)";

fn transfers(plans: &[bvfs_engine::planner::Plan]) -> Vec<&OpKind> {
    plans
        .iter()
        .flat_map(|plan| &plan.ops)
        .map(|op| &op.kind)
        .filter(|kind| kind.transfers_content())
        .collect()
}

// --- edit / edit ---------------------------------------------------------------------------------------

#[test]
fn edit_edit_with_equal_content_only_advances_synced() {
    let mut world = World::new();
    world.base(|t| t.file(1, "/notes.txt", "v1"));
    world.remote(|t| t.write(1, "v2"));
    world.local(|t| t.write(1, "v2"));

    let plans = world.sync();

    assert!(
        plans
            .iter()
            .flat_map(|plan| &plan.ops)
            .all(|op| op.kind == OpKind::RecordSynced)
    );
    assert_eq!(world.converged(), ["/notes.txt = v2"]);
}

#[test]
fn edit_edit_keeps_the_server_version_and_the_local_bytes_in_a_conflicted_copy() {
    let mut world = World::new();
    world.base(|t| t.file(1, "/notes.txt", "v1"));
    world.remote(|t| t.write(1, "theirs"));
    world.local(|t| t.write(1, "mine"));

    world.sync();

    assert_eq!(
        world.converged(),
        [
            format!("/notes {COPY}.txt = mine"),
            "/notes.txt = theirs".into()
        ]
    );
    assert!(
        world.trees.local.get(id(1)).is_some(),
        "the original keeps its id and path"
    );
}

// --- edit / delete -------------------------------------------------------------------------------------

#[test]
fn local_edit_beats_remote_delete_and_comes_back_as_a_new_node() {
    let mut world = World::new();
    world.base(|t| t.file(1, "/plan.md", "v1"));
    world.remote(|t| t.rm(1));
    world.local(|t| t.write(1, "v2"));

    world.sync();

    assert_eq!(world.converged(), ["/plan.md = v2"]);
    let node = world.at(&world.trees.remote, "/plan.md");
    assert_ne!(
        node,
        Some(id(1)),
        "the server's id is deleted for good; the edit lives on as a new node"
    );
}

#[test]
fn remote_edit_beats_local_delete_and_comes_back_as_a_placeholder() {
    let mut world = World::new();
    world.base(|t| t.file(1, "/plan.md", "v1"));
    world.remote(|t| t.write(1, "v2"));
    world.local(|t| t.rm(1));

    let plan = world.plan();

    assert!(matches!(&plan.ops[..], [op] if matches!(&op.kind,
        OpKind::LocalCreate { node, fetch_content: false } if node.id == id(1))));
    world.sync();
    assert_eq!(world.converged(), ["/plan.md = v2"]);
}

// --- moves ---------------------------------------------------------------------------------------------

#[test]
fn move_move_keeps_the_server_move_and_undoes_the_local_one() {
    let mut world = World::new();
    world.base(|t| {
        t.mkdir(1, "/a");
        t.mkdir(2, "/b");
        t.file(3, "/doc", "v1");
    });
    world.remote(|t| t.mv(3, "/a/doc"));
    world.local(|t| t.mv(3, "/b/doc"));

    world.sync();

    assert_eq!(
        world.converged(),
        ["/a/", "/a/doc = v1", "/b/"],
        "one node, in one place"
    );
}

#[test]
fn move_and_edit_both_apply_to_the_same_node() {
    let mut world = World::new();
    world.base(|t| {
        t.mkdir(1, "/archive");
        t.file(2, "/report", "draft");
    });
    world.remote(|t| t.mv(2, "/archive/report-2024"));
    world.local(|t| t.write(2, "final"));

    world.sync();

    assert_eq!(
        world.converged(),
        ["/archive/", "/archive/report-2024 = final"]
    );
}

#[test]
fn a_local_move_that_closes_a_cycle_with_a_remote_move_is_undone() {
    let mut world = World::new();
    world.base(|t| {
        t.mkdir(1, "/a");
        t.mkdir(2, "/b");
    });
    world.remote(|t| t.mv(2, "/a/b"));
    world.local(|t| t.mv(1, "/b/a"));

    world.sync();

    assert_eq!(world.converged(), ["/a/", "/a/b/"]);
}

#[test]
fn swapped_names_pass_through_a_temporary_name() {
    let mut world = World::new();
    world.base(|t| {
        t.file(1, "/x", "one");
        t.file(2, "/y", "two");
    });
    world.local(|t| {
        t.mv(1, "/tmp");
        t.mv(2, "/x");
        t.mv(1, "/y");
    });

    let plans = world.sync();

    assert!(
        plans.len() > 1,
        "the swap needs one plan to park a node and one to finish"
    );
    assert_eq!(world.converged(), ["/x = two", "/y = one"]);
}

// --- creates -------------------------------------------------------------------------------------------

#[test]
fn create_create_with_equal_content_merges_into_one_node() {
    let mut world = World::new();
    world.remote(|t| t.file(10, "/todo", "same"));
    world.local(|t| t.file(20, "/todo", "same"));

    let plans = world.sync();

    assert!(
        transfers(&plans).is_empty(),
        "equal content is never transferred"
    );
    assert_eq!(world.converged(), ["/todo = same"]);
    assert!(
        world.trees.local.get(id(10)).is_some(),
        "the server's node wins"
    );
}

#[test]
fn create_create_with_different_content_makes_the_local_one_a_conflicted_copy() {
    let mut world = World::new();
    world.remote(|t| t.file(10, "/todo", "theirs"));
    world.local(|t| t.file(20, "/todo", "mine"));

    world.sync();

    assert_eq!(
        world.converged(),
        [format!("/todo {COPY} = mine"), "/todo = theirs".into()]
    );
}

#[test]
fn two_new_directories_with_one_name_merge_and_their_files_meet_inside() {
    let mut world = World::new();
    world.remote(|t| {
        t.mkdir(10, "/photos");
        t.file(11, "/photos/a.jpg", "a");
    });
    world.local(|t| {
        t.mkdir(20, "/photos");
        t.file(21, "/photos/b.jpg", "b");
    });

    world.sync();

    assert_eq!(
        world.converged(),
        ["/photos/", "/photos/a.jpg = a", "/photos/b.jpg = b"]
    );
}

// --- deleted directories -------------------------------------------------------------------------------

#[test]
fn a_remotely_deleted_directory_keeps_what_changed_locally_inside_it() {
    let mut world = World::new();
    world.base(|t| {
        t.mkdir(1, "/project");
        t.file(2, "/project/old.txt", "old");
        t.file(3, "/project/edited.txt", "v1");
    });
    world.remote(|t| t.rm(1));
    world.local(|t| {
        t.write(3, "v2");
        t.file(4, "/project/new.txt", "new");
    });

    world.sync();

    assert_eq!(
        world.converged(),
        [
            "/project/",
            "/project/edited.txt = v2",
            "/project/new.txt = new"
        ],
        "unchanged children go, the directory stays for what is new or changed"
    );
}

#[test]
fn a_locally_deleted_directory_comes_back_for_what_the_server_added_inside() {
    let mut world = World::new();
    world.base(|t| {
        t.mkdir(1, "/shared");
        t.file(2, "/shared/old.txt", "old");
    });
    world.remote(|t| t.file(10, "/shared/new.txt", "new"));
    world.local(|t| t.rm(1));

    world.sync();

    assert_eq!(world.converged(), ["/shared/", "/shared/new.txt = new"]);
    assert!(
        world.trees.remote.get(id(1)).is_some(),
        "the directory keeps its id"
    );
}

// --- type changes --------------------------------------------------------------------------------------

#[test]
fn file_and_directory_at_one_path_the_local_one_takes_the_conflicted_name() {
    let mut world = World::new();
    world.base(|t| t.file(1, "/data", "v1"));
    world.remote(|t| {
        t.rm(1);
        t.mkdir(10, "/data");
        t.file(11, "/data/part", "p");
    });
    world.local(|t| t.write(1, "v2"));

    world.sync();

    assert_eq!(
        world.converged(),
        [
            format!("/data {COPY} = v2"),
            "/data/".into(),
            "/data/part = p".into()
        ],
        "the directory is never emptied to make room"
    );
}

// --- names this platform cannot show -------------------------------------------------------------------

#[test]
fn a_name_invalid_here_stays_remote_only_and_is_reported() {
    let mut world = World::new();
    world.settings.names = NamePolicy::Windows;
    world.remote(|t| {
        t.file(10, "/a:b", "x");
        t.file(11, "/fine", "y");
    });

    world.sync();
    let plan = world.plan();

    assert!(
        matches!(&plan.reported[..], [Report::InvalidName { id, .. }] if *id == planner_support::id(10))
    );
    assert_eq!(world.listing(&world.trees.local), ["/fine = y"]);
    assert_eq!(
        world.listing(&world.trees.remote),
        ["/a:b = x", "/fine = y"]
    );
}

#[test]
fn remote_names_that_fold_together_here_keep_one_and_report_the_other() {
    let mut world = World::new();
    world.settings.names = NamePolicy::Windows;
    world.remote(|t| {
        t.file(10, "/Readme", "upper");
        t.file(11, "/readme", "lower");
    });

    world.sync();
    let plan = world.plan();

    assert!(
        matches!(&plan.reported[..], [Report::NameCollision { id, kept, .. }]
        if *id == planner_support::id(11) && *kept == planner_support::id(10))
    );
    assert_eq!(world.listing(&world.trees.local), ["/Readme = upper"]);
}

// --- transfers -----------------------------------------------------------------------------------------

#[test]
fn metadata_only_changes_move_no_content() {
    let mut world = World::new();
    world.base(|t| {
        t.file(1, "/run.sh", "echo");
        t.symlink(2, "/latest", "v1");
        t.file(3, "/log", "text");
    });
    world.remote(|t| t.chmod_x(1));
    world.local(|t| {
        t.write(2, "v2");
        t.touch(id(3), 42);
    });

    let plans = world.sync();

    assert!(transfers(&plans).is_empty(), "{:?}", transfers(&plans));
    assert_eq!(
        world.converged(),
        ["/latest -> v2", "/log = text", "/run.sh = echo (x)"]
    );
    assert_eq!(world.trees.remote.get(id(3)).unwrap().attrs.mtime_ns, 42);
}

#[test]
fn a_remote_edit_fetches_content_only_for_hydrated_or_pinned_files() {
    let mut world = World::new();
    world.base(|t| {
        t.file(1, "/placeholder", "v1");
        t.file(2, "/hydrated", "v1");
    });
    world.remote(|t| {
        t.write(1, "v2");
        t.write(2, "v2");
    });
    world.settings.resident = NodeIdSet::from_iter([id(2)]);

    let plan = world.plan();

    let fetches: Vec<_> = plan
        .ops
        .iter()
        .filter_map(|op| match &op.kind {
            OpKind::LocalUpdate {
                id, fetch_content, ..
            } => Some((*id, *fetch_content)),
            _ => None,
        })
        .collect();
    assert_eq!(fetches, [(id(1), false), (id(2), true)]);
}

#[test]
fn a_local_edit_uploads_with_the_remote_revision_as_base() {
    let mut world = World::new();
    world.base(|t| t.file(1, "/f", "v1"));
    world.local(|t| t.write(1, "v2"));

    let plan = world.plan();

    assert!(matches!(&plan.ops[..], [op] if matches!(&op.kind,
        OpKind::RemoteUpdate { base_revision: 1, upload: true, .. })
        && matches!(&op.synced, SyncedChange::SetAttrs { .. })));
}

// --- conflicted-copy names -----------------------------------------------------------------------------

#[test]
fn conflicted_copy_names_are_unique_among_siblings_and_deterministic() {
    let mut world = World::new();
    world.base(|t| {
        t.file(1, "/a.txt", "v1");
        t.file(2, &format!("/a {COPY}.txt"), "earlier copy");
    });
    world.remote(|t| t.write(1, "theirs"));
    world.local(|t| t.write(1, "mine"));

    assert_eq!(
        world.plan(),
        world.plan(),
        "the same trees always give the same plan"
    );
    world.sync();

    assert_eq!(
        world.converged(),
        [
            format!("/a {COPY} 2.txt = mine"),
            format!("/a {COPY}.txt = earlier copy"),
            "/a.txt = theirs".into()
        ]
    );
}

// --- delete safety -------------------------------------------------------------------------------------

#[test]
fn the_bulk_delete_brake_holds_deletes_while_the_rest_runs() {
    let mut world = World::new();
    world.base(|t| {
        for n in 1..=5 {
            t.file(n, &format!("/f{n}"), "x");
        }
        t.file(9, "/kept", "v1");
    });
    world.remote(|t| {
        for n in 1..=5 {
            t.rm(n);
        }
        t.write(9, "v2");
    });
    world.settings.brake = DeleteBrake {
        max_deletes: 3,
        ..DeleteBrake::default()
    };

    world.sync();
    let plan = world.plan();

    assert_eq!(plan.held_deletes.len(), 5);
    assert!(
        plan.held_deletes
            .iter()
            .all(|held| held.side == Side::Local)
    );
    assert_eq!(
        world.trees.local.get(id(9)).unwrap().attrs,
        world.trees.remote.get(id(9)).unwrap().attrs
    );
    assert_eq!(
        world.listing(&world.trees.local).len(),
        6,
        "nothing deleted yet"
    );

    world.settings.confirmed = plan.held_deletes.iter().map(|held| held.id).collect();
    world.sync();
    assert_eq!(world.converged(), ["/kept = v2"]);
}
